"""Data sampling: disjoint seeded subsets D_A and D_B of a LLaVA-CoT style data set (spec §1 Stage I).

Writes ``<output>/<name>/data.jsonl`` + images per subset and ``<output>/manifest.json`` (every
record id with the sha256 of the record and of its image); lines that fail validation are
quarantined beside the source, and more than ``max_bad_fraction`` of them is an error.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from sherlock.config import ConfigError, help_field
from sherlock.data.llava_cot import DEFAULT_MAX_BAD_FRACTION, load_llava_cot
from sherlock.data.sampling import sample_to_dir
from sherlock.stages.io import record_stage_config


@dataclass(kw_only=True)
class SampleConfig:
    """Config of ``sherlock sample``."""
    data: str = help_field(help="LLaVA-CoT style jsonl, or a directory holding it and its images", uri="data")
    data_file: str = help_field("train.jsonl", "the jsonl's name when data is a directory")
    output: str = help_field(help="directory for the subsets and manifest.json", uri="output")
    sizes: str = help_field("D_A=10000,D_B=10000", "subset sizes NAME=SIZE[,NAME=SIZE…]")
    seed: int = help_field(0, "sampling seed")
    max_bad_fraction: float = help_field(DEFAULT_MAX_BAD_FRACTION, "largest tolerated fraction of invalid lines")

    def parsed_sizes(self) -> dict[str, int]:
        """The subset sizes as ``{name: size}``."""
        try:
            sizes = {name.strip(): int(size) for name, size in (part.split("=") for part in self.sizes.split(","))}
        except ValueError:
            raise ConfigError(f"sizes must be NAME=SIZE[,NAME=SIZE…], got {self.sizes!r}") from None
        if any(size <= 0 for size in sizes.values()):
            raise ConfigError(f"subset sizes must be positive, got {self.sizes!r}")
        return sizes


def run_sample(config: SampleConfig) -> dict[str, int]:
    """Sample the subsets; returns ``{subset name: records}``."""
    sizes = config.parsed_sizes()
    path = Path(config.data)
    data = load_llava_cot(path / config.data_file if path.is_dir() else path, max_bad_fraction=config.max_bad_fraction)
    if data.num_quarantined:
        print(f"{data.num_quarantined} of {data.num_lines} lines quarantined: {data.quarantine_path}", file=sys.stderr)
    manifest = sample_to_dir(data, config.output, sizes, config.seed)
    record_stage_config(config, config.output)
    return {name: len(entries) for name, entries in manifest["subsets"].items()}
