"""The ``sft`` component: ``component.py`` defines it; ``README.md`` is written from it."""

from components.sft.component import sft

__all__ = ["sft"]
