"""STIC stage 1 data (spec §3, the authors' ``generate_pref.py``): description preferences from unlabeled images.

For every image,

- y_w: the model's answer to the step-by-step description prompt on the **clean** image;
- x: one of the 8 simple description prompts (the stored training prompt);
- y_l, with probability 0.5 each: one of the 8 hallucination prompts on the clean image, or x on a
  corrupted image (downscaled to a 20-px shorter side, or colour-jittered, 50/50).

Training uses the clean image for both responses: the preference step is DPO (β = 0.1) plus
α · (−Σ log π_θ(y_w|x)), α = 1/1024 (``configs/*/train-preferences.stic.yaml``). The rejected log-probability
is the standard one, log π(y_l|x); the authors' ``_get_noisy_batch_logps`` is not reproduced (see
``docs/recipes.md``). Stage 2 data: :mod:`sherlock.stages.stic_describe`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from sherlock import distributed
from sherlock.config import help_field
from sherlock.data.llava_cot import load_data
from sherlock.data.preferences import PreferencePair
from sherlock.data.schema import open_image
from sherlock.decoding import SamplingSettings
from sherlock.perturb import stic_corruption
from sherlock.prompts import STIC_DESCRIPTION_PROMPT, STIC_HALLUCINATION_PROMPTS, STIC_SIMPLE_PROMPTS
from sherlock.stages.build_preferences import save_pairs
from sherlock.stages.io import record_stage_config

STIC_TEMPERATURE = 0.2  # generate_pref.py and generate_des_stage2.py
HALLUCINATION = "hallucination_prompt"


@dataclass(frozen=True)
class Dispreferred:
    """How y_l of one image is drawn: the simple prompt x, the prompt y_l answers, and the corruption seed
    (``None``: a hallucination prompt on the clean image).
    """

    simple_prompt: str
    prompt: str
    corruption_seed: int | None


def draw_dispreferred(rng: random.Random) -> Dispreferred:
    """X ~ U(simple prompts); y_l from a hallucination prompt (p = 0.5) or from x on a corrupted image."""
    simple = rng.choice(STIC_SIMPLE_PROMPTS)
    if rng.random() < 0.5:
        return Dispreferred(simple, rng.choice(STIC_HALLUCINATION_PROMPTS), None)
    return Dispreferred(simple, simple, rng.randrange(2**31))


@dataclass(kw_only=True)
class STICPairsConfig(SamplingSettings):
    """Config of ``sherlock stic-pairs``."""
    model: str = help_field(help="checkpoint that writes both descriptions (the model STIC improves)", uri="model")
    data: str = help_field(help="data set directory or jsonl; only its images are used (unlabeled)", uri="data")
    output: str = help_field(help="directory for pairs.jsonl, stats.json and the clean images", uri="output")
    temperature: float = help_field(STIC_TEMPERATURE, "sampling temperature (STIC: 0.2)")
    seed: int = help_field(0, "seed of the prompt and corruption draws and of the sampling")


def run_stic_pairs(config: STICPairsConfig) -> Path:
    """Build the stage-1 description pairs of every image; returns the path of ``pairs.jsonl``.

    A pair whose two descriptions are identical carries no preference and is dropped (counted in
    ``stats.json``).
    """
    from sherlock.generation import generate
    from sherlock.models.engines import load_generator

    data = load_data(config.data)
    rng = random.Random(config.seed)
    draws = [draw_dispreferred(rng) for _ in data.records]
    images = [open_image(data.image_root, r) for r in data.records]
    corrupted = [(image, HALLUCINATION) if d.corruption_seed is None else stic_corruption(image, d.corruption_seed)
                 for d, image in zip(draws, images)]
    model, processor = load_generator(config.model, config.engine, distributed.device(), config.image_budget())
    decoding = config.decoding(config.seed)
    preferred = generate(model, processor, [STIC_DESCRIPTION_PROMPT] * len(images), images, config=decoding,
                         desc="STIC preferred descriptions", stream="STIC y_w",
                         keys=[r.id for r in data.records])
    dispreferred = generate(model, processor, [d.prompt for d in draws], [image for image, _ in corrupted],
                            config=decoding, desc="STIC dispreferred descriptions", stream="STIC y_l",
                            keys=[r.id for r in data.records])
    pairs = [PreferencePair(r.id, r.image, d.simple_prompt, "", y_w, "", y_l, truncation_step=1, noise_level=0.0,
                            perturbation=kind)
             for r, d, (_, kind), y_w, y_l in zip(data.records, draws, corrupted, preferred, dispreferred)
             if y_w != y_l]
    record_stage_config(config, config.output)
    return save_pairs(pairs, data.image_root, config.output, {"dropped_identical": len(data.records) - len(pairs)})
