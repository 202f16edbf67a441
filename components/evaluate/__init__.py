"""The ``evaluate`` component: ``component.py`` defines it; ``README.md`` is written from it."""

from components.evaluate.component import evaluate

__all__ = ["evaluate"]
