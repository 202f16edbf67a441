"""Inputs and outputs shared by the stages: data directories and run configs."""

from __future__ import annotations

from pathlib import Path

from sherlock.data.llava_cot import LoadedData, load_llava_cot
from sherlock.data.sampling import SUBSET_DATA
from sherlock.stages.config import dump_config

STAGE_CONFIG = "stage_config.yaml"


def load_data(path: str | Path) -> LoadedData:
    """Load a data set given as a subset directory (``<dir>/data.jsonl`` + images) or a jsonl file."""
    path = Path(path)
    if path.is_dir():
        path = path / SUBSET_DATA
    if not path.is_file():
        raise FileNotFoundError(f"no data set at {path}")
    return load_llava_cot(path)


def record_stage_config(config, output_dir: str | Path) -> None:
    """Save the config a stage ran with beside its outputs (reloadable with ``--config``)."""
    dump_config(config, Path(output_dir) / STAGE_CONFIG)
