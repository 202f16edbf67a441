"""The embedded end-to-end job: synthetic data → tiny VLM → brief SFT → held-out accuracy before and after."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from sherlock.benchmarks import BenchmarkItem, load_benchmark, score_responses
from sherlock.config import help_field
from sherlock.data.llava_cot import load_llava_cot
from sherlock.data.synthetic import IMAGE_SIZE, generate_synthetic
from sherlock.generation import DecodingConfig, generate
from sherlock.models.loading import load_vlm
from sherlock.models.tiny import build_tiny_vlm, tokenizer_corpus
from sherlock.training.setup import TrainSettings
from sherlock.training.sft import examples_from_records, train_sft

TOKENIZER_CORPUS_ITEMS = 3000


@dataclass
class DemoConfig:
    """Sizes and settings of the embedded run (defaults take a few minutes on 2 CPU cores)."""

    workdir: str = help_field("runs/demo", "directory of the data, the model and the report")
    train_items: int = help_field(8000, "synthetic training items")
    eval_items: int = help_field(1000, "held-out items")
    preset: str = help_field("tiny", "tiny Mllama preset (sherlock.models.tiny.PRESETS)")
    image_size: int = help_field(IMAGE_SIZE, "image side in pixels")
    epochs: float = help_field(2.0, "SFT epochs")
    learning_rate: float = help_field(3e-3, "SFT learning rate")
    batch_size: int = help_field(16, "examples per step")
    seed: int = help_field(0, "seed of the data and the training run")
    eval_batch_size: int = help_field(64, "prompts per generate call")
    max_new_tokens: int = help_field(256, "longest generated response")


def _report(label: str, result: dict) -> str:
    tiers = ", ".join(f"{tier} {score:.1f}%" for tier, score in result["per_category"].items())
    return f"{label:<14} {result['score']:.1f}% ± {result['stderr']:.1f} (n={result['n']})   [{tiers}]"


def _evaluate(model_dir: Path, items: list[BenchmarkItem], generation: DecodingConfig) -> dict:
    """Greedy direct answers, scored against the gold answers (accuracy in %, per tier)."""
    model, processor = load_vlm(model_dir, dtype=torch.float32)
    responses = generate(model, processor, [i.prompt for i in items], [i.image for i in items], config=generation,
                         desc="evaluating")
    return score_responses("llava_cot", items, responses)


def run_demo(config: DemoConfig) -> dict:
    """Run the embedded job and return (and write to ``workdir/metrics.json``) its metrics."""
    workdir = Path(config.workdir)
    timings: dict[str, float] = {}

    def timed(stage: str, fn, *args, **kwargs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        timings[stage] = round(time.perf_counter() - start, 1)
        return out

    train_file = timed("data", generate_synthetic, workdir / "data/train", config.train_items, seed=config.seed,
                       image_size=config.image_size)
    eval_file = generate_synthetic(workdir / "data/eval", config.eval_items, seed=config.seed + 1_000_003,
                                   image_size=config.image_size)
    train, held_out = load_llava_cot(train_file), load_benchmark("llava_cot", eval_file)

    corpus = tokenizer_corpus(train.records[:TOKENIZER_CORPUS_ITEMS])
    base = timed("build", build_tiny_vlm, workdir / "models/base", corpus,
                 preset=config.preset, image_size=config.image_size, seed=config.seed)
    generation = DecodingConfig(max_new_tokens=config.max_new_tokens, batch_size=config.eval_batch_size)

    before = timed("eval_before", _evaluate, base, held_out, generation)

    settings = TrainSettings(learning_rate=config.learning_rate, epochs=config.epochs, batch_size=config.batch_size,
                             seed=config.seed, logging_steps=50)
    sft = timed("sft", train_sft, base, examples_from_records(train.records, train.image_root),
                workdir / "models/sft", settings)

    after = timed("eval_after", _evaluate, sft, held_out, generation)

    print(_report("before SFT", before))
    print(_report("after SFT", after))
    metrics = {"config": asdict(config), "before": before, "after": after, "seconds": timings}
    (workdir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
