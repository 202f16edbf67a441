"""Inputs and outputs shared by the stages: data directories, jsonl side files, run configs."""

from __future__ import annotations

import json
from collections.abc import Iterable
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


def write_jsonl(rows: Iterable[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    with open(path, encoding="utf-8") as source:
        return [json.loads(line) for line in source if line.strip()]


def record_stage_config(config, output_dir: str | Path) -> None:
    """Save the config a stage ran with beside its outputs (reloadable with ``--config``)."""
    dump_config(config, Path(output_dir) / STAGE_CONFIG)
