"""The ``scl_pairs`` component: ``component.py`` defines it; ``README.md`` is written from it."""

from components.scl_pairs.component import scl_pairs

__all__ = ["scl_pairs"]
