"""The ``register_and_gate`` component: ``component.py`` defines it; ``README.md`` is written from it."""

from components.register_and_gate.component import register_and_gate

__all__ = ["register_and_gate"]
