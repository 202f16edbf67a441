"""Stage II data: offline preference pairs by reasoning truncation and visual perturbation (Alg. 1).

For each D_A item: draw i and ε, perturb the image, and let the Sherlock-SFT model continue the
gold prefix Y^w_{<i} on the perturbed image (T = 0.7). Y^l = Y^w_{<i} + that continuation; the
pair keeps a reference to the clean image. The ``on-policy`` scheme continues after the gold SUMMARY
and CAPTION on the clean image and keeps only continuations whose answer is wrong: the model's own
reasoning errors, the kind its test errors are (docs/results.md).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from sherlock import distributed
from sherlock.answers import is_correct, options_in
from sherlock.chat import chat_prompt
from sherlock.config import ConfigError, help_field
from sherlock.data.llava_cot import load_data
from sherlock.data.preferences import Perturbation, PreferencePair, draw_perturbation, write_pairs
from sherlock.data.schema import PAIRS_FILE, Record, open_image
from sherlock.decoding import DecodingConfig, SamplingSettings
from sherlock.reasoning import truncate
from sherlock.stages.io import record_stage_config
from sherlock.stages.registry import STAGES

STATS_FILE = STAGES["build-preferences"].outputs["stats"]


@dataclass(kw_only=True)
class PerturbationSettings:
    """How (i, ε) are drawn for the rejected trajectory (App. B.2, or the released code's scheme)."""

    scheme: str = help_field("paper", "paper (i ~ U{1..4}, ε ~ U(0,1)), released (the authors' code) or on-policy "
                                      "(i = 3 on the clean image; offline, only wrong answers kept)")
    truncation_steps: str | None = help_field(None, "comma-separated steps to draw from, e.g. 1 (ablation)")
    legacy_uint8_noise: bool = help_field(False, "wrap Gaussian noise modulo 256 like the released code")

    def steps(self) -> tuple[int, ...] | None:
        """The truncation steps to draw from, or None for the scheme's own."""
        if self.truncation_steps is None:
            return None
        try:
            return tuple(int(s) for s in str(self.truncation_steps).split(","))
        except ValueError:
            raise ConfigError("truncation_steps must be comma-separated integers, "
                              f"got {self.truncation_steps!r}") from None

    def check_perturbation(self) -> None:
        """Draw once: an unknown scheme or steps outside it raise :class:`ConfigError`."""
        try:
            draw_perturbation(random.Random(0), self.scheme, self.steps())
        except ValueError as error:
            raise ConfigError(str(error)) from None


@dataclass(kw_only=True)
class BuildPreferencesConfig(PerturbationSettings, SamplingSettings):
    """Config of ``sherlock build-preferences`` (Alg. 1)."""
    model: str = help_field(help="Sherlock-SFT checkpoint that writes the rejected suffixes", uri="model")
    data: str = help_field(help="data set directory or jsonl (D_A)", uri="data")
    output: str = help_field(help="directory for pairs.jsonl, stats.json and the clean images", uri="output")
    seed: int = help_field(0, "seed of the (i, ε) draws, the noise and the sampling")


def rejected_suffixes(
    model, processor, prompts: list[str | list[dict]], images: list[Image.Image], prefixes: list[str],
    perturbations: list[Perturbation], decoding: DecodingConfig, legacy_uint8: bool = False,
    keys: list[str] | None = None,
) -> list[str]:
    """Y^l_{≥i} ~ π(· | question, perturbed image, prefix) for every item (Alg. 1, lines 6–9); each
    prompt as :func:`sherlock.generation.generate` takes it (a question after its earlier turns).
    """
    from sherlock.generation import generate

    perturbed = [p.apply(image, legacy_uint8) for p, image in zip(perturbations, images, strict=True)]
    return generate(model, processor, prompts, perturbed, prefixes, decoding, desc="rejected suffixes",
                    stream="rejected suffix", keys=keys)


def reasoning_errors(pairs: list[PreferencePair], records: list[Record]) -> list[PreferencePair]:
    """The pairs whose rejected response answers its record's question wrong (the ``on-policy`` scheme)."""
    gold = {r.id: r for r in records}
    return [p for p in pairs
            if not is_correct(p.rejected, gold[p.id].answer, gold[p.id].answer_type, options_in(p.question))]


def save_pairs(pairs: list[PreferencePair], image_root: Path, output: str | Path, stats: dict) -> Path:
    """Write the pairs and their statistics (counts per step, β weights, what was dropped); returns the
    pairs file. Rank 0 writes; every rank waits until it has (a training step may read them next).
    """
    if not pairs:
        raise ValueError(f"no preference pairs were built ({stats}); nothing to train on")
    weights = [p.beta_weight for p in pairs]
    stats = stats | {
        "num_pairs": len(pairs),
        "per_step": dict(sorted(Counter(p.truncation_step for p in pairs).items())),
        "per_perturbation": dict(Counter(p.perturbation for p in pairs)),
        "beta_weight": {"mean": sum(weights) / len(weights), "min": min(weights), "max": max(weights)},
    }
    if distributed.is_main():
        write_pairs(pairs, image_root, output)
        (Path(output) / STATS_FILE).write_text(json.dumps(stats, indent=2))
    distributed.barrier()
    return Path(output) / PAIRS_FILE


def run_build_preferences(config: BuildPreferencesConfig) -> Path:
    """Build the offline pairs of D_A; returns the path of ``pairs.jsonl``.

    A pair whose rejected suffix reproduces the chosen one exactly carries no preference and is
    dropped, and so, under the ``on-policy`` scheme, is one whose rejected answer is right; the counts
    are written to ``stats.json``.
    """
    from sherlock.models.engines import load_generator

    config.check_perturbation()
    data = load_data(config.data)
    rng = random.Random(config.seed)
    draws = [draw_perturbation(rng, config.scheme, config.steps()) for _ in data.records]
    splits = [truncate(r.response, d.truncation_step) for r, d in zip(data.records, draws)]
    model, processor = load_generator(config.model, config.engine, distributed.device(), config.image_budget())
    suffixes = rejected_suffixes(
        model, processor, [chat_prompt(r.question, r.context) for r in data.records],
        [open_image(data.image_root, r) for r in data.records],
        [prefix for prefix, _ in splits], draws, config.decoding(config.seed), config.legacy_uint8_noise,
        keys=[r.id for r in data.records],
    )
    pairs = [
        PreferencePair(r.id, r.image, r.question, prefix, suffix_w, prefix, suffix_l,
                       d.truncation_step, d.noise_level, d.kind, r.context)
        for r, d, (prefix, suffix_w), suffix_l in zip(data.records, draws, splits, suffixes)
        if suffix_l != suffix_w
    ]
    dropped = {"dropped_identical": len(data.records) - len(pairs)}
    if config.scheme == "on-policy":
        wrong = reasoning_errors(pairs, data.records)
        pairs, dropped = wrong, dropped | {"dropped_right": len(pairs) - len(wrong)}
    record_stage_config(config, config.output)
    return save_pairs(pairs, data.image_root, config.output, dropped)
