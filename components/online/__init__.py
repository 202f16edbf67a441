"""The ``online`` component: ``component.py`` defines it; ``README.md`` is written from it."""

from components.online.component import online

__all__ = ["online"]
