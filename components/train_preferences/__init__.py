"""The ``train_preferences`` component: ``component.py`` defines it; ``README.md`` is written from it."""

from components.train_preferences.component import train_preferences

__all__ = ["train_preferences"]
