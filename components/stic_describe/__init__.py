"""The ``stic_describe`` component: ``component.py`` defines it; ``README.md`` is written from it."""

from components.stic_describe.component import stic_describe

__all__ = ["stic_describe"]
