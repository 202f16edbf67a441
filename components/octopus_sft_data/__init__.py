"""The ``octopus_sft_data`` component: ``component.py`` defines it; ``README.md`` is written from it."""

from components.octopus_sft_data.component import octopus_sft_data

__all__ = ["octopus_sft_data"]
