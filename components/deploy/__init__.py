"""The ``deploy`` component: ``component.py`` defines it; ``README.md`` is written from it."""

from components.deploy.component import deploy

__all__ = ["deploy"]
