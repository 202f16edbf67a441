"""The ``train_rl`` component: ``component.py`` defines it; ``README.md`` is written from it."""

from components.train_rl.component import train_rl

__all__ = ["train_rl"]
