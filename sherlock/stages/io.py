"""What every stage writes beside its outputs: the config it ran with."""

from __future__ import annotations

from pathlib import Path

from sherlock.config import dump_config

STAGE_CONFIG = "stage_config.yaml"


def record_stage_config(config, output_dir: str | Path) -> None:
    """Save the config a stage ran with beside its outputs (reloadable with ``--config``)."""
    dump_config(config, Path(output_dir) / STAGE_CONFIG)
