"""The ``build_preferences`` component: ``component.py`` defines it; ``README.md`` is written from it."""

from components.build_preferences.component import build_preferences

__all__ = ["build_preferences"]
