"""The ``prepare_inputs`` component: ``component.py`` defines it; ``README.md`` is written from it."""

from components.prepare_inputs.component import prepare_inputs

__all__ = ["prepare_inputs"]
