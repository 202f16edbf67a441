"""The whole method on the synthetic task, per seed, through the stage functions (docs/results.md).

For each seed: draw D_A, D_B and an unlabeled pool D_U from one synthetic set; build a tiny Mllama;
R0 (SFT on D_A) → Y^l on D_B → Sherlock-SFT (from the base model) → offline pairs on D_A → Sherlock
offline (+ the static-β and w/o-L_SC ablations) → online iteration 1 on D_U; evaluate every
checkpoint on one held-out set, directly and after greedy self-correction rounds.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from sherlock.data.llava_cot import load_llava_cot
from sherlock.data.sampling import sample_to_dir
from sherlock.data.synthetic import generate_synthetic
from sherlock.models.tiny import build_tiny_vlm, tokenizer_corpus
from sherlock.stages.evaluate import EvaluationConfig, run_evaluation
from sherlock.stages.online import OnlineConfig, run_online_iteration
from sherlock.stages.preference_training import PreferenceTrainingConfig, run_train_preferences
from sherlock.stages.preferences import PreferenceDataConfig, run_build_preferences
from sherlock.stages.rejected import SampleRejectedConfig, run_sample_rejected
from sherlock.stages.sft import SFTStageConfig, run_sft

EVAL_SEED = 1_000_003  # one held-out set for every seed
CHECKPOINTS = ("R0", "Sherlock-SFT", "Sherlock offline", "offline, static β", "offline, w/o L_SC", "online iter 1")


@dataclass
class ExperimentConfig:
    workdir: str = "runs/results"
    seeds: str = "0,1,2"
    subset_size: int = 600  # |D_A| = |D_B|
    pool_size: int = 600  # |D_U|, unlabeled
    online_pairs: int = 150
    eval_items: int = 1000
    preset: str = "tiny"
    sft_epochs: float = 6.0
    sft_learning_rate: float = 3e-3
    preference_learning_rate: float = 2e-5
    online_learning_rate: float = 1e-5
    preference_epochs: float = 1.0
    preference_batch_size: int = 8
    alpha: float = 0.25
    sc_beta: float = 0.25
    dpo_beta: float = 0.1
    correction_rounds: int = 1
    max_new_tokens: int = 160
    generation_batch_size: int = 128


def _slug(name: str) -> str:
    """Directory name of a checkpoint label ("offline, w/o L_SC" -> "offline_wo_L_SC")."""
    return name.replace(",", "").replace("/", "").replace(" ", "_")


def run_seed(config: ExperimentConfig, seed: int) -> dict:
    """All stages and evaluations for one seed; returns {checkpoint: evaluation metrics}."""
    root = Path(config.workdir) / f"seed_{seed}"
    timings: dict[str, float] = {}

    def timed(name, function, stage_config):
        start = time.perf_counter()
        result = function(stage_config)
        timings[name] = round(time.perf_counter() - start, 1)
        return result

    pool_file = generate_synthetic(root / "data/all", 2 * config.subset_size + config.pool_size, seed=seed)
    eval_dir = generate_synthetic(Path(config.workdir) / "eval", config.eval_items, seed=EVAL_SEED).parent
    pool = load_llava_cot(pool_file)
    sample_to_dir(pool, root / "subsets",
                  {"D_A": config.subset_size, "D_B": config.subset_size, "D_U": config.pool_size}, seed)
    subsets = {name: str(root / "subsets" / name) for name in ("D_A", "D_B", "D_U")}
    base = str(build_tiny_vlm(root / "base", tokenizer_corpus(pool.records), config.preset, seed=seed))

    sampling = dict(max_new_tokens=config.max_new_tokens, generation_batch_size=config.generation_batch_size, seed=seed)
    sft = dict(learning_rate=config.sft_learning_rate, epochs=config.sft_epochs, seed=seed, logging_steps=50)
    r0 = timed("R0", run_sft, SFTStageConfig(model=base, data=subsets["D_A"], output=str(root / "r0"), **sft))
    rejected = timed("sample Y^l", run_sample_rejected, SampleRejectedConfig(
        model=str(r0), data=subsets["D_B"], output=str(root / "rejected"), **sampling))
    sherlock_sft = timed("Sherlock-SFT", run_sft, SFTStageConfig(
        model=base, data=subsets["D_B"], rejected=str(rejected), output=str(root / "sherlock_sft"), **sft))
    pairs = timed("offline pairs", run_build_preferences, PreferenceDataConfig(
        model=str(sherlock_sft), data=subsets["D_A"], output=str(root / "pairs"), **sampling))

    preference = dict(model=str(sherlock_sft), data=str(pairs.parent), learning_rate=config.preference_learning_rate,
                      epochs=config.preference_epochs, batch_size=config.preference_batch_size, alpha=config.alpha,
                      sc_beta=config.sc_beta, dpo_beta=config.dpo_beta, seed=seed, logging_steps=10,
                      reference_cache=str(root / "reference_cache"))
    variants = {"Sherlock offline": {}, "offline, static β": {"dynamic_beta": False},
                "offline, w/o L_SC": {"use_sc": False}}
    models = {"R0": r0, "Sherlock-SFT": sherlock_sft}
    for name, switches in variants.items():
        output = root / _slug(name)
        models[name] = timed(name, run_train_preferences,
                             PreferenceTrainingConfig(**preference | switches, output=str(output)))
    online = OnlineConfig(**preference | sampling | {
        "model": str(models["Sherlock offline"]), "data": subsets["D_U"], "output": str(root / "online_iter_1"),
        "num_pairs": config.online_pairs, "learning_rate": config.online_learning_rate, "reference_cache": None})
    models["online iter 1"] = timed("online iter 1", run_online_iteration, online)

    results = {}
    for name, model in models.items():
        metrics = timed(f"evaluate {name}", run_evaluation, EvaluationConfig(
            model=str(model), benchmarks=f"llava_cot={eval_dir}", correction_rounds=config.correction_rounds,
            output=str(root / "eval" / _slug(name)),
            max_new_tokens=config.max_new_tokens, generation_batch_size=config.generation_batch_size, seed=seed))
        results[name] = [r["score"] for r in metrics["benchmarks"]["llava_cot"]["rounds"]]
    summary = {"seed": seed, "scores": results, "seconds": timings,
               "online_pairs": json.loads((root / "online_iter_1/pairs/stats.json").read_text()),
               "offline_pairs": json.loads((root / "pairs/stats.json").read_text())}
    (root / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def results_table(summaries: list[dict], rounds: int) -> str:
    """Markdown: mean ± sd over seeds of the direct and per-round accuracies of every checkpoint."""
    def cell(values):
        mean = statistics.mean(values)
        return f"{mean:.1f} ± {statistics.stdev(values):.1f}" if len(values) > 1 else f"{mean:.1f}"

    header = "| checkpoint | direct | " + " | ".join(f"+SC round {k}" for k in range(1, rounds + 1)) + " |"
    lines = [header, "|" + "---|" * (rounds + 2)]
    for name in CHECKPOINTS:
        per_round = list(zip(*(s["scores"][name] for s in summaries)))
        lines.append(f"| {name} | " + " | ".join(cell(v) for v in per_round) + " |")
    return "\n".join(lines) + "\n"


def run_experiment(config: ExperimentConfig) -> str:
    """Run every seed (reusing finished ones' summaries) and write ``workdir/results.md``."""
    summaries = []
    for seed in (int(s) for s in config.seeds.split(",")):
        done = Path(config.workdir) / f"seed_{seed}" / "summary.json"
        summaries.append(json.loads(done.read_text()) if done.is_file() else run_seed(config, seed))
    table = results_table(summaries, config.correction_rounds)
    Path(config.workdir, "results.md").write_text(table)
    Path(config.workdir, "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))
    return table
