"""The ``sample_rejected`` component: ``component.py`` defines it; ``README.md`` is written from it."""

from components.sample_rejected.component import sample_rejected

__all__ = ["sample_rejected"]
