"""What every stage writes beside its outputs: the config it ran with."""

from __future__ import annotations

from pathlib import Path

from sherlock import distributed
from sherlock.config import dump_config

STAGE_CONFIG = "stage_config.yaml"


def record_stage_config(config, output_dir: str | Path) -> None:
    """Save the config a stage ran with beside its outputs (reloadable with ``--config``); rank 0 writes it."""
    if distributed.is_main():
        dump_config(config, Path(output_dir) / STAGE_CONFIG)
