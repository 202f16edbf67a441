"""Octopus against its baselines on the embedded default, measured with the self-correction harness.

Per seed, from the committed base, on the current task: D_A, D_B (labelled) and D_U (the RL prompts, whose gold
answers the reward checks). R0 = SFT on D_A; Sherlock's offline recipe (Y^l → Sherlock-SFT → offline pairs →
Stage II); Octopus (cold start on D_B → SFT with the tags as tokens → RL Stage I → Stage II on D_U); at equal RL
optimiser steps (Stage I + Stage II), GSPO with n = 4 and n = 8 rollouts from R0 (the plain question, no
recombination) and the ablations of octopus-spec §4: w/o augmentation (``selection: none``), random augmentation
(``selection: random``), w/o Stage I (Stage II only). Every setting is the embedded pipeline's
(``configs/embedded``). Every checkpoint is evaluated on one held-out set with one correction round: R0's,
Sherlock's and GSPO's round is R(Q, previous response), Octopus's continues the response after SEP (round 0 = o1,
round 1 = o2); beside it the blank image, the oracle- and verifier-gated round, pass@2 and majority@2 of two
sampled answers, and the flips. Comparisons are paired on the held-out items, pooled over the seeds.

``python -m experiments.octopus [--workdir runs/octopus] [--seeds 0,1,2]``: resumable like the harness (a finished
stage or evaluation is not run again; each seed's ``summary.json`` is written as it finishes).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from experiments.harness import EVAL_SEED, embedded_settings, headroom_fields, item_hits, stage_runner, timer
from sherlock import recipes
from sherlock.config import help_field
from sherlock.data.llava_cot import load_llava_cot
from sherlock.data.sampling import sample_to_dir
from sherlock.data.schema import read_jsonl
from sherlock.data.synthetic import generate_synthetic
from sherlock.diagnostics import paired_difference
from sherlock.models import embedded_base
from sherlock.models.loading import require_checkpoint
from sherlock.stages.evaluate import PREDICTIONS_FILE, EvaluateConfig, run_evaluate
from sherlock.stages.registry import STAGES

# plain GSPO on the trainer Octopus extends: n rollouts, no pairs, nothing masked, no KL, the plain question
GSPO = {"selection": "none", "mask": "none", "o1_kl": 0.0, "trigger": False}
# (A, its answers, B, its answers): A − B on the same held-out items; "direct" = round 0 (Octopus: o1), "sc" =
# round 1 (Octopus: o2; the others: after R(Q, previous)). An arm's final answer is Octopus's o2 and a GSPO or R0
# model's direct answer (neither was trained to correct).
COMPARISONS = (("Octopus", "sc", "GSPO n=8", "direct"), ("Octopus", "direct", "GSPO n=8", "direct"),
               ("Octopus", "sc", "GSPO n=4", "direct"), ("Octopus", "sc", "R0", "direct"),
               ("Octopus", "sc", "Octopus", "direct"), ("Octopus", "sc", "Sherlock offline", "sc"),
               ("Octopus", "sc", "w/o augmentation", "sc"), ("Octopus", "sc", "random augmentation", "sc"),
               ("Octopus", "sc", "w/o Stage I", "sc"), ("Octopus", "sc", "Octopus cold start", "sc"),
               ("GSPO n=8", "direct", "R0", "direct"), ("GSPO n=8", "direct", "GSPO n=4", "direct"),
               ("Octopus cold start", "direct", "R0", "direct"))
RL_FIELDS = ("natural_wc_rate", "positive_share_generated", "positive_share_trained", "pool_size", "copied_rows")


@dataclass(kw_only=True)
class OctopusExperimentConfig:
    workdir: str = help_field("runs/octopus", "directory of the seeds' data, checkpoints and tables")
    seeds: str = help_field("0,1,2", "comma-separated seeds (one data set and training run each)")
    subset_size: int = help_field(250, "|D_A| = |D_B| (the embedded pipeline's)")
    pool_size: int = help_field(100, "|D_U|: the RL prompts")
    rl_steps: int = help_field(40, "optimiser steps of each Octopus RL stage; the one-stage arms take twice as many")
    eval_items: int = help_field(300, "held-out items (one set for every seed)")
    base_model: str = help_field("embedded", "the committed base (sherlock/models/embedded) or a checkpoint path")
    results_json: str | None = help_field(None, "also write the rows under the key 'octopus' of this results.json "
                                                "(docs/results.json)")


def train_arms(run, base: str, subsets: dict[str, str], steps: int) -> dict[str, tuple[Path, str]]:
    """Every arm's checkpoint and how its rounds ask (``prompt`` or ``continue``), by row name."""
    d_a, d_b, d_u = subsets["D_A"], subsets["D_B"], subsets["D_U"]
    sherlock = recipes.sherlock(run, base, d_a, d_b, d_u, online_iterations=0)
    r0 = sherlock["r0"]

    def rl_steps(step: str, preset: str, title: str, **inputs):  # each RL stage takes ``steps`` steps
        return run(step, preset, title, **inputs, **({"max_steps": steps} if preset.startswith("train-rl") else {}))

    octopus = recipes.octopus(rl_steps, r0, d_b, d_u)
    cold = octopus["octopus-sft"]
    one_stage = {"max_steps": 2 * steps, "data": d_u}
    arms = {"R0": (r0, "prompt"), "Sherlock offline": (sherlock["offline"], "prompt"),
            "Octopus cold start": (cold, "continue"), "Octopus": (octopus["octopus"], "continue")}
    for n in (4, 8):
        arms[f"GSPO n={n}"] = (run(f"gspo-{n}", "train-rl.octopus-2", f"GSPO n={n}", model=r0, generations=n,
                                   **GSPO, **one_stage), "prompt")
    for name, step, selection in (("w/o augmentation", "no-augmentation", "none"),
                                  ("random augmentation", "random-augmentation", "random")):
        stage1 = run(f"{step}-stage1", "train-rl.octopus-1", f"{name}, Stage I", model=cold, data=d_u,
                     selection=selection, max_steps=steps)
        arms[name] = (run(f"{step}-stage2", "train-rl.octopus-2", f"{name}, Stage II", model=stage1, data=d_u,
                          selection=selection, max_steps=steps), "continue")
    arms["w/o Stage I"] = (run("no-stage1", "train-rl.octopus-2", "w/o Stage I", model=cold, **one_stage), "continue")
    return arms


def rl_statistics(outputs: list[Path]) -> dict:
    """Means over the logged steps of the RL stages in ``outputs`` (their ``rewards.jsonl``): the rollouts'
    natural w→c rate, the positive share of the generated and of the trained rows, the pool, the copied rows,
    the reward and the seconds per step."""
    steps = [row for output in outputs for row in read_jsonl(STAGES["train-rl"].output(output, "rewards"))]
    found = {key: statistics.mean(row[f"octopus/{key}"] for row in steps) for key in RL_FIELDS
             if all(f"octopus/{key}" in row for row in steps)}
    return found | {"reward": statistics.mean(row["reward"] for row in steps),
                    "step_seconds": statistics.mean(row["step_time"] for row in steps), "steps": len(steps)}


def evaluate_arm(root: Path, held_out: Path, name: str, model: Path, correction: str, seed: int, timed) -> dict:
    """The arm's held-out entry: accuracy per round, the blank image, the blind prior of D_A, the headroom
    (:func:`experiments.harness.headroom_fields`) and the per-item hits of round 0 and round 1."""
    settings = embedded_settings(seed)("evaluate")
    output = root / "eval" / name.replace("/", "").replace(" ", "_").replace("=", "")
    metrics = timed(f"evaluate {name}", run_evaluate, EvaluateConfig(
        **settings | {"correction_rounds": 1, "correction": correction, "greedy_direct": False,
                      "wait_baseline": False},
        model=str(model), benchmarks=f"llava_cot={held_out}", prior_data=str(root / "subsets" / "D_A"),
        output=str(output)))["benchmarks"]["llava_cot"]
    return {"scores": [r["score"] for r in metrics["rounds"]], "blank_image": metrics["blank_image"]["score"],
            "blind_prior": metrics["blind_prior"], "sc_minus_direct": metrics["sc_minus_direct"],
            "headroom": headroom_fields(metrics), "hits": item_hits(output / PREDICTIONS_FILE)}


def run_seed(config: OctopusExperimentConfig, seed: int) -> dict:
    """Train and evaluate every arm of one seed; writes and returns its summary."""
    root = Path(config.workdir) / f"seed_{seed}"
    timings: dict[str, float] = {}
    timed = timer(timings)
    pool = generate_synthetic(root / "data/all", 2 * config.subset_size + config.pool_size, seed=seed)
    held_out = generate_synthetic(Path(config.workdir) / "eval", config.eval_items, seed=EVAL_SEED).parent
    sample_to_dir(load_llava_cot(pool), root / "subsets",
                  {"D_A": config.subset_size, "D_B": config.subset_size, "D_U": config.pool_size}, seed)
    subsets = {name: str(root / "subsets" / name) for name in ("D_A", "D_B", "D_U")}
    base = str(embedded_base() if config.base_model == "embedded" else require_checkpoint(config.base_model))
    arms = train_arms(stage_runner(root, timed, embedded_settings(seed)), base, subsets, config.rl_steps)
    rl_outputs = {"Octopus": ["octopus-stage1", "octopus-stage2"], "GSPO n=4": ["gspo-4"], "GSPO n=8": ["gspo-8"],
                  "w/o augmentation": ["no-augmentation-stage1", "no-augmentation-stage2"],
                  "random augmentation": ["random-augmentation-stage1", "random-augmentation-stage2"],
                  "w/o Stage I": ["no-stage1"]}
    checkpoints = {}
    for name, (model, correction) in arms.items():
        checkpoints[name] = evaluate_arm(root, held_out, name, model, correction, seed, timed)
        if name in rl_outputs:
            checkpoints[name]["rl"] = rl_statistics([root / step for step in rl_outputs[name]])
    cold_start = json.loads(Path(STAGES["octopus-sft-data"].output(root / "octopus-sft-data", "stats")).read_text())
    summary = {"seed": seed, "checkpoints": checkpoints, "cold_start": cold_start, "seconds": timings}
    (root / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def compare(summaries: list[dict]) -> list[dict]:
    """:data:`COMPARISONS`: A − B per seed and pooled over the seeds' items (paired bootstrap 95 % CI, McNemar)."""
    def hits(name: str, summary: dict, which: str) -> list[bool]:
        return [c == "1" for c in summary["checkpoints"][name]["hits"][which]]

    return [{"a": a, "a_round": a_round, "b": b, "b_round": b_round,
             "per_seed": {str(s["seed"]): paired_difference(hits(a, s, a_round), hits(b, s, b_round))["difference"]
                          for s in summaries},
             "pooled": paired_difference([h for s in summaries for h in hits(a, s, a_round)],
                                         [h for s in summaries for h in hits(b, s, b_round)])}
            for a, a_round, b, b_round in COMPARISONS]


def tables(summaries: list[dict]) -> str:
    """Markdown: every arm (mean over seeds of round 0, round 1, the baselines and the headroom; the RL
    statistics) and the paired comparisons."""
    def mean(values) -> str:
        values = list(values)
        return f"{statistics.mean(values):.1f}" + (f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else "")

    lines = ["| arm | round 0 (o1) | round 1 (o2) | fixed / broken | oracle-gated | pass@2 | maj@2 | blank image | "
             "blind prior | w→c rate | positive share gen → trained | s / step |", "|" + "---|" * 12]
    for name in summaries[0]["checkpoints"]:
        entries = [s["checkpoints"][name] for s in summaries]
        flips = [e["headroom"]["flips"][0] for e in entries]
        rl = [e.get("rl") for e in entries]
        rl_cells = ["–", "–", "–"] if None in rl else [
            mean(100 * r.get("natural_wc_rate", 0.0) for r in rl),
            f"{mean(100 * r['positive_share_generated'] for r in rl)} → "
            f"{mean(100 * r['positive_share_trained'] for r in rl)}" if "positive_share_trained" in rl[0] else "–",
            mean(r["step_seconds"] for r in rl)]
        lines.append(f"| {name} | {mean(e['scores'][0] for e in entries)} | {mean(e['scores'][1] for e in entries)} | "
                     f"{sum(f['fixed'] for f in flips)} / {sum(f['broken'] for f in flips)} | "
                     f"{mean(e['headroom']['oracle_gated'][-1] for e in entries)} | "
                     f"{mean(e['headroom']['pass_at_k'] for e in entries)} | "
                     f"{mean(e['headroom']['majority_at_k'] for e in entries)} | "
                     f"{mean(e['blank_image'] for e in entries)} | {mean(e['blind_prior'] for e in entries)} | "
                     + " | ".join(rl_cells) + " |")
    def answers(name: str, which: str) -> str:
        return f"{name}, round {'1' if which == 'sc' else '0'}"

    lines += ["", "| A − B | per seed | pooled [95% CI] | fixed / broken | McNemar p |", "|---|---|---|---|---|"]
    for row in compare(summaries):
        pooled = row["pooled"]
        lines.append(f"| {answers(row['a'], row['a_round'])} − {answers(row['b'], row['b_round'])} | "
                     + ", ".join(f"{v:+.1f}" for v in row["per_seed"].values())
                     + f" | {pooled['difference']:+.1f} [{pooled['ci_low']:+.1f}, {pooled['ci_high']:+.1f}] | "
                     f"{pooled['fixed']} / {pooled['broken']} | {pooled['p_mcnemar']:.3g} |")
    return "\n".join(lines) + "\n"


def results_section(summaries: list[dict], config: OctopusExperimentConfig) -> dict:
    """The rows ``docs/results.json`` holds under ``octopus``: per arm and seed the accuracies, baselines,
    headroom and RL statistics; the paired comparisons; the cold-start data's counts; the settings."""
    arms = {name: {str(s["seed"]): {"direct": s["checkpoints"][name]["scores"][0],
                                    "sc_rounds": s["checkpoints"][name]["scores"][1:],
                                    "blank_image": s["checkpoints"][name]["blank_image"],
                                    "blind_prior": s["checkpoints"][name]["blind_prior"]}
                   | s["checkpoints"][name]["headroom"] | ({"rl": s["checkpoints"][name]["rl"]}
                                                          if "rl" in s["checkpoints"][name] else {})
                   for s in summaries} for name in summaries[0]["checkpoints"]}
    return {"units": "accuracy in %, held-out items of the current synthetic task", "checkpoints": arms,
            "comparisons": compare(summaries), "cold_start": {str(s["seed"]): s["cold_start"] for s in summaries},
            "config": dataclasses.asdict(config)}


def run_octopus_experiment(config: OctopusExperimentConfig) -> str:
    """Run every seed (reusing finished ones' summaries); write ``octopus.md`` and ``octopus.json``."""
    summaries = []
    for seed in (int(s) for s in config.seeds.split(",")):
        done = Path(config.workdir) / f"seed_{seed}" / "summary.json"
        summaries.append(json.loads(done.read_text()) if done.is_file() else run_seed(config, seed))
    text = tables(summaries)
    section = results_section(summaries, config)
    Path(config.workdir, "octopus.md").write_text(text)
    Path(config.workdir, "octopus.json").write_text(json.dumps(section, indent=2))
    if config.results_json:
        path = Path(config.results_json)
        path.write_text(json.dumps(json.loads(path.read_text()) | {"octopus": section}, indent=2) + "\n")
    return text


def main(argv: list[str] | None = None) -> None:
    from experiments.__main__ import run_command

    run_command(OctopusExperimentConfig, run_octopus_experiment, "python -m experiments.octopus", __doc__, argv)


if __name__ == "__main__":
    main()
