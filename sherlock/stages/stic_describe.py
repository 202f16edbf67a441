"""STIC stage 2 data (spec §3, ``generate_des_stage2.py`` + ``add_des_to_data.py``): the stage-1 model
describes the image of each item of a small labelled SFT subset (a random simple prompt, T = 0.2); the
description goes in front of the question, the answer is unchanged, and the SFT stage continues
training on the result.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path

from sherlock import distributed
from sherlock.config import ConfigError, help_field
from sherlock.data.llava_cot import DATA_FILE, load_data, write_llava_cot
from sherlock.data.sampling import link_or_copy
from sherlock.data.schema import open_image, write_jsonl
from sherlock.decoding import SamplingSettings
from sherlock.prompts import STIC_SIMPLE_PROMPTS, stic_description_infused
from sherlock.stages.io import record_stage_config
from sherlock.stages.registry import STAGES
from sherlock.stages.stic_pairs import STIC_TEMPERATURE

DESCRIPTIONS_FILE = STAGES["stic-describe"].outputs["descriptions"]


@dataclass(kw_only=True)
class STICDescribeConfig(SamplingSettings):
    """Config of ``sherlock stic-describe``."""
    model: str = help_field(help="STIC stage-1 checkpoint that writes the descriptions", uri="model")
    data: str = help_field(help="labelled SFT data set directory or jsonl", uri="data")
    output: str = help_field(help="data set directory: data.jsonl with description-infused prompts + images",
                             uri="output")
    num_items: int | None = help_field(None, "a random subset of this many items (STIC: 5k; default: all)")
    temperature: float = help_field(STIC_TEMPERATURE, "sampling temperature (STIC: 0.2)")
    seed: int = help_field(0, "seed of the subset, the prompt draws and the sampling")


def run_stic_describe(config: STICDescribeConfig) -> Path:
    """Write the description-infused SFT set (``data.jsonl`` + images + ``descriptions.jsonl``)."""
    from sherlock.generation import generate
    from sherlock.models.engines import load_generator

    data = load_data(config.data)
    rng = random.Random(config.seed)
    records = data.records
    if config.num_items is not None:
        if not 0 < config.num_items <= len(records):
            raise ConfigError(f"num_items must be in 1..{len(records)} (the data set's size), got {config.num_items}")
        records = rng.sample(records, config.num_items)
    prompts = [rng.choice(STIC_SIMPLE_PROMPTS) for _ in records]
    model, processor = load_generator(config.model, config.engine, distributed.device(), config.image_budget())
    descriptions = generate(model, processor, prompts, [open_image(data.image_root, r) for r in records],
                            config=config.decoding(config.seed), desc="STIC stage-2 descriptions",
                            stream="STIC description", keys=[r.id for r in records])
    output = Path(config.output)
    if distributed.is_main():
        for record in records:
            link_or_copy(data.image_root / record.image, output / record.image)
        write_llava_cot([dataclasses.replace(r, question=stic_description_infused(r.question, d))
                         for r, d in zip(records, descriptions)], output / DATA_FILE)
        write_jsonl(({"id": r.id, "prompt": p, "description": d} for r, p, d in zip(records, prompts, descriptions)),
                    output / DESCRIPTIONS_FILE)
    record_stage_config(config, output)
    return output
