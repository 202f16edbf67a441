"""The ``sample`` component: ``component.py`` defines it; ``README.md`` is written from it."""

from components.sample.component import sample

__all__ = ["sample"]
