"""Stage I (b): sample a response Y^l from R0 for every item of D_B (T = 0.7, spec §1)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sherlock import distributed
from sherlock.answers import is_correct, options_in
from sherlock.chat import chat_prompt
from sherlock.config import help_field
from sherlock.data.llava_cot import load_data
from sherlock.data.schema import open_image, write_jsonl
from sherlock.decoding import SamplingSettings
from sherlock.diagnostics import departure_histogram
from sherlock.stages.io import record_stage_config
from sherlock.stages.registry import STAGES

REJECTED_FILE, STATS_FILE = (STAGES["sample-rejected"].outputs[name] for name in ("rejected", "stats"))


@dataclass(kw_only=True)
class SampleRejectedConfig(SamplingSettings):
    """Config of ``sherlock sample-rejected``."""
    model: str = help_field(help="R0 checkpoint", uri="model")
    data: str = help_field(help="data set directory or jsonl (D_B)", uri="data")
    output: str = help_field(help="directory for rejected.jsonl", uri="output")
    seed: int = help_field(0, "sampling seed")


def run_sample_rejected(config: SampleRejectedConfig) -> Path:
    """Write ``rejected.jsonl`` with one ``{"id", "rejected", "correct"}`` row per record.

    ``correct`` (whether Y^l's conclusion matches the gold answer, when the record has one) is
    informational; Sherlock-SFT uses every sample. ``stats.json`` holds the fraction correct and
    where Y^l first departs from Y^w (the record's response), counted over all samples and over
    the wrong ones: what a correction sequence teaches to fix.
    """
    from sherlock.generation import generate
    from sherlock.models.engines import load_generator

    data = load_data(config.data)
    model, processor = load_generator(config.model, config.engine, distributed.device(), config.image_budget())
    images = [open_image(data.image_root, r) for r in data.records]
    samples = generate(model, processor, [chat_prompt(r.question, r.context) for r in data.records], images,
                       config=config.decoding(config.seed), desc="sampling Y^l", stream="Y^l",
                       keys=[r.id for r in data.records])
    rows = [{"id": r.id, "rejected": y, "correct": is_correct(y, r.answer, r.answer_type, options_in(r.question))
             if r.answer else None}
            for r, y in zip(data.records, samples)]
    wrong = [(row["rejected"], r.response) for row, r in zip(rows, data.records) if row["correct"] is False]
    labelled = [row["correct"] for row in rows if row["correct"] is not None]
    stats = {"num_samples": len(rows), "correct_fraction": sum(labelled) / len(labelled) if labelled else None,
             "departure": departure_histogram(samples, [r.response for r in data.records]),
             "departure_of_wrong": departure_histogram(*zip(*wrong)) if wrong else {}}
    record_stage_config(config, config.output)
    if distributed.is_main():
        (Path(config.output) / STATS_FILE).write_text(json.dumps(stats, indent=2))
        write_jsonl(rows, Path(config.output) / REJECTED_FILE)
    return Path(config.output) / REJECTED_FILE
