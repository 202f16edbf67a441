"""The ``stic_pairs`` component: ``component.py`` defines it; ``README.md`` is written from it."""

from components.stic_pairs.component import stic_pairs

__all__ = ["stic_pairs"]
