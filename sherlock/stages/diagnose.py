"""Diagnostics of one checkpoint on one labelled data set: is it better than not looking?

Writes ``diagnostics.json`` with fractions in [0, 1]: ``accuracy`` (direct answer, the evaluation
protocol: sampled T = 0.6, top_p = 0.7 by default), ``greedy_accuracy``, ``blank_image_accuracy``
(the same prompts with a white image), ``blind_prior_accuracy`` (no model: the training data's
most likely answer per question, from ``prior_data``, or leave-one-out on the data itself),
``sc_rounds`` (accuracy after each greedy correction round), ``sc_minus_direct`` (points, paired
95 % CI), ``num_items``, and for data with gold 4-stage responses ``perception`` and
``departure`` (:mod:`sherlock.diagnostics`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sherlock import distributed
from sherlock.benchmarks import load_benchmark
from sherlock.config import ConfigError, help_field
from sherlock.data.llava_cot import load_data
from sherlock.diagnostics import BlindPrior, leave_one_out_prior_accuracy
from sherlock.stages.evaluate import ProtocolSettings, evaluate_benchmark
from sherlock.stages.io import record_stage_config
from sherlock.stages.registry import STAGES

DIAGNOSTICS_FILE = STAGES["diagnose"].outputs["diagnostics"]


@dataclass(kw_only=True)
class DiagnoseConfig(ProtocolSettings):
    """Config of ``sherlock diagnose``."""
    model: str = help_field(help="checkpoint to diagnose", uri="model")
    data: str = help_field(help="labelled data set directory or jsonl (synthetic or LLaVA-CoT layout)", uri="data")
    output: str = help_field(help="directory for diagnostics.json", uri="output")
    num_items: int | None = help_field(None, "diagnose only the first N items")
    correction_rounds: int = help_field(1, "greedy self-correction rounds after the direct answer")

    def check(self) -> None:
        """Refuse a bad protocol or item count before a model is loaded."""
        self.check_protocol()
        if self.num_items is not None and self.num_items <= 0:
            raise ConfigError("num_items must be positive")


def run_diagnose(config: DiagnoseConfig) -> dict:
    """Diagnose ``config.model`` on ``config.data``; writes and returns the diagnostics."""
    from sherlock.models.engines import load_generator

    config.check()
    items = load_benchmark("llava_cot", config.data, config.num_items)
    model, processor = load_generator(config.model, config.engine, distributed.device(), config.image_budget())
    prior = BlindPrior(load_data(config.prior_data).records) if config.prior_data else None
    result, _, _ = evaluate_benchmark(model, processor, "llava_cot", items, config, config.protocol(config.model),
                                      prior)
    rounds = [r["score"] / 100 for r in result["rounds"]]
    diagnostics = {
        "model": config.model, "data": config.data, "num_items": len(items),
        "accuracy": rounds[0], "sc_rounds": rounds[1:],
        "greedy_accuracy": result["greedy_direct"]["score"] / 100 if "greedy_direct" in result else None,
        "blank_image_accuracy": result["blank_image"]["score"] / 100 if "blank_image" in result else None,
        "blind_prior_accuracy": (result["blind_prior"] / 100 if prior is not None
                                 else leave_one_out_prior_accuracy(load_data(config.data).records[: config.num_items])),
        "blind_prior_source": "prior_data" if prior is not None else "leave-one-out on data",
    } | {key: result[key] for key in ("sc_minus_direct", "perception", "departure") if key in result}
    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    record_stage_config(config, output)
    if distributed.is_main():
        (output / DIAGNOSTICS_FILE).write_text(json.dumps(diagnostics, indent=2))
    return diagnostics
