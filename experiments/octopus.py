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

The RL learning rate and steps are chosen on a validation split (``--rl-grid``, seed of the first seed's data):
Octopus's pair by o2's accuracy, GSPO n = 8's learning rate by its answer at the same steps (equal optimiser steps);
the ablations and GSPO n = 4 take their method's choice (``tune.md``, ``tune.json``).

``python -m experiments.octopus [--workdir runs/octopus] [--seeds 0,1,2] [--rl-grid 1e-5x40,1e-4x40]``: resumable
like the harness (a finished stage or evaluation is not run again; each seed's ``summary.json`` is written as it
finishes).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from experiments.harness import (
    EVAL_SEED,
    VALIDATION_SEED,
    cell,
    embedded_settings,
    headroom_fields,
    hit_list,
    item_hits,
    stage_runner,
    timer,
)
from sherlock import recipes
from sherlock.config import ConfigError, help_field
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
    rl_steps: int = help_field(120, "optimiser steps of each Octopus RL stage; the one-stage arms take twice as many "
                                   "(without --rl-grid)")
    rl_learning_rate: float | None = help_field(None, "the RL arms' learning rate (without --rl-grid; default: the "
                                                      "embedded train-rl presets')")
    rl_grid: str | None = help_field(None, "choose the RL learning rate and steps per stage on the validation split "
                                           "among LRxSTEPS,... (e.g. 1e-5x40,1e-4x40,1e-4x120)")
    validation_items: int = help_field(300, "validation items of --rl-grid")
    ablations: bool = help_field(True, "also train the ablations (w/o augmentation, random augmentation, "
                                       "w/o Stage I)")
    eval_items: int = help_field(300, "held-out items (one set for every seed)")
    base_model: str = help_field("embedded", "the committed base (sherlock/models/embedded) or a checkpoint path")
    results_json: str | None = help_field(None, "also write the rows under the key 'octopus' of this results.json "
                                                "(docs/results.json)")

    def grid(self) -> list[dict]:
        """:attr:`rl_grid` as RL settings (``learning_rate``, ``max_steps`` per stage); refuses a malformed one."""
        settings = []
        for setting in (self.rl_grid or "").split(","):
            try:
                rate, steps = setting.lower().split("x")
                settings.append({"learning_rate": float(rate), "max_steps": int(steps)})
            except ValueError:
                raise ConfigError(f"rl_grid: {setting!r} is not LRxSTEPS (e.g. 1e-4x40)") from None
            if settings[-1]["learning_rate"] <= 0 or settings[-1]["max_steps"] < 1:
                raise ConfigError(f"rl_grid: {setting!r} needs a positive learning rate and steps")
        return settings

    def fixed_rl(self) -> dict:
        """The RL settings without a grid: :attr:`rl_steps` and :attr:`rl_learning_rate` (if set)."""
        return {"max_steps": self.rl_steps} | ({"learning_rate": self.rl_learning_rate}
                                               if self.rl_learning_rate is not None else {})


class Arm(NamedTuple):
    """A checkpoint the experiment evaluates: how its rounds ask (``prompt`` or ``continue``) and the step
    folders of its RL stages (their ``rewards.jsonl``)."""

    model: Path
    correction: str
    rl_steps: tuple[str, ...] = ()


def twice(rl: dict) -> dict:
    """A one-stage arm's settings: twice the steps of one Octopus stage (equal optimiser steps)."""
    return rl | {"max_steps": 2 * rl["max_steps"]}


def octopus_rl(run, prefix: str, cold: Path, d_u: str, rl: dict, title: str, **fields) -> Arm:
    """RL Stage I then Stage II from the cold start with the RL settings ``rl``."""
    stage1 = run(f"{prefix}-stage1", "train-rl.octopus-1", f"{title}, Stage I", model=cold, data=d_u, **rl, **fields)
    return Arm(run(f"{prefix}-stage2", "train-rl.octopus-2", f"{title}, Stage II", model=stage1, data=d_u, **rl,
                   **fields), "continue", (f"{prefix}-stage1", f"{prefix}-stage2"))


def gspo(run, step: str, r0: Path, d_u: str, n: int, rl: dict, title: str) -> Arm:
    """Plain GSPO from R0 with ``n`` rollouts, one stage of twice ``rl``'s steps."""
    return Arm(run(step, "train-rl.octopus-2", title, model=r0, data=d_u, generations=n, **GSPO, **twice(rl)),
               "prompt", (step,))


@dataclass
class Seed:
    """One seed's data and its resumable stage runner."""

    number: int
    root: Path
    run: Callable
    timed: Callable
    timings: dict
    subsets: dict[str, str]
    held_out: Path
    base: str

    def start(self) -> tuple[dict, Path]:
        """Sherlock's chain (R0 first) and Octopus's cold start from R0 (both resumable)."""
        d_a, d_b, d_u = (self.subsets[name] for name in ("D_A", "D_B", "D_U"))
        sherlock = recipes.sherlock(self.run, self.base, d_a, d_b, d_u, online_iterations=0)
        return sherlock, recipes.octopus_cold_start(self.run, sherlock["r0"], d_b)


def prepare(config: OctopusExperimentConfig, number: int) -> Seed:
    """The seed's D_A, D_B, D_U, the shared held-out set and the stage runner on the embedded settings."""
    root = Path(config.workdir) / f"seed_{number}"
    timings: dict[str, float] = {}
    timed = timer(timings)
    pool = generate_synthetic(root / "data/all", 2 * config.subset_size + config.pool_size, seed=number)
    held_out = generate_synthetic(Path(config.workdir) / "eval", config.eval_items, seed=EVAL_SEED).parent
    sample_to_dir(load_llava_cot(pool), root / "subsets",
                  {"D_A": config.subset_size, "D_B": config.subset_size, "D_U": config.pool_size}, number)
    base = str(embedded_base() if config.base_model == "embedded" else require_checkpoint(config.base_model))
    return Seed(number, root, stage_runner(root, timed, embedded_settings(number)), timed, timings,
                {name: str(root / "subsets" / name) for name in ("D_A", "D_B", "D_U")}, held_out, base)


def train_arms(seed: Seed, rl: dict[str, dict], ablations: bool) -> dict[str, Arm]:
    """Every arm by row name; ``rl``: the RL settings of Octopus (its ablations too) and of GSPO."""
    sherlock, cold = seed.start()
    run, d_b, d_u = seed.run, seed.subsets["D_B"], seed.subsets["D_U"]

    def with_rl(step: str, preset: str, title: str, **inputs):  # the recipe's RL stages with Octopus's settings
        return run(step, preset, title, **inputs, **(rl["Octopus"] if preset.startswith("train-rl") else {}))

    r0 = sherlock["r0"]
    arms = {"R0": Arm(r0, "prompt"), "Sherlock offline": Arm(sherlock["offline"], "prompt"),
            "Octopus cold start": Arm(cold, "continue"),
            "Octopus": Arm(recipes.octopus(with_rl, r0, d_b, d_u)["octopus"], "continue",
                           ("octopus-stage1", "octopus-stage2"))}
    for n in (4, 8):
        arms[f"GSPO n={n}"] = gspo(run, f"gspo-{n}", r0, d_u, n, rl["GSPO"], f"GSPO n={n}")
    if ablations:
        for name, step, selection in (("w/o augmentation", "no-augmentation", "none"),
                                      ("random augmentation", "random-augmentation", "random")):
            arms[name] = octopus_rl(run, step, cold, d_u, rl["Octopus"], name, selection=selection)
        arms["w/o Stage I"] = Arm(run("no-stage1", "train-rl.octopus-2", "w/o Stage I", model=cold, data=d_u,
                                      **twice(rl["Octopus"])), "continue", ("no-stage1",))
    return arms


def choose_rl(config: OctopusExperimentConfig, seed: Seed) -> dict[str, dict]:
    """The RL settings chosen on the first seed's validation split among :meth:`OctopusExperimentConfig.grid`
    (:func:`chosen_settings`; writes ``tune.md`` and ``tune.json``)."""
    validation = generate_synthetic(Path(config.workdir) / "validation", config.validation_items,
                                    seed=VALIDATION_SEED).parent
    sherlock, cold = seed.start()
    rows = []
    for rl in config.grid():
        tag = f"tune/lr{rl['learning_rate']:g}-s{rl['max_steps']}"
        arms = {"Octopus": octopus_rl(seed.run, f"{tag}/octopus", cold, seed.subsets["D_U"], rl, f"Octopus {tag}"),
                "GSPO n=8": gspo(seed.run, f"{tag}/gspo-8", sherlock["r0"], seed.subsets["D_U"], 8, rl,
                                 f"GSPO n=8 {tag}")}
        scores = {name: [r["score"] for r in evaluate(seed, validation, f"{tag}/{name}", arm, quick=True)["rounds"]]
                  for name, arm in arms.items()}
        rows.append(rl | {"Octopus o1": scores["Octopus"][0], "Octopus o2": scores["Octopus"][1],
                          "GSPO n=8": scores["GSPO n=8"][0]})
    chosen = chosen_settings(rows)
    lines = ["| learning rate | steps per stage | Octopus o1 | Octopus o2 | GSPO n=8 (twice the steps) |",
             "|---|---|---|---|---|"] + [
        f"| {row['learning_rate']:g} | {row['max_steps']} | {row['Octopus o1']:.1f} | {row['Octopus o2']:.1f} | "
        f"{row['GSPO n=8']:.1f} |" for row in rows]
    Path(config.workdir, "tune.md").write_text("\n".join(lines) + f"\n\nchosen: {json.dumps(chosen)}\n")
    Path(config.workdir, "tune.json").write_text(json.dumps(
        {"seed": seed.number, "validation_items": config.validation_items, "rows": rows, "chosen": chosen}, indent=2))
    return chosen


def chosen_settings(rows: list[dict]) -> dict[str, dict]:
    """Octopus's learning rate and steps: the row of the best o2 (the first of equals); GSPO's: the learning rate
    of its best answer among the rows of those steps (equal optimiser steps)."""
    best = max(rows, key=lambda row: row["Octopus o2"])
    best_gspo = max((row for row in rows if row["max_steps"] == best["max_steps"]), key=lambda row: row["GSPO n=8"])
    return {name: {key: row[key] for key in ("learning_rate", "max_steps")}
            for name, row in (("Octopus", best), ("GSPO", best_gspo))}


def rl_statistics(outputs: list[Path]) -> dict:
    """Means over the logged steps of the RL stages in ``outputs`` (their ``rewards.jsonl``): the rollouts'
    natural w→c rate, the positive share of the generated and of the trained rows, the pool, the copied rows,
    the reward and the seconds per step."""
    steps = [row for output in outputs for row in read_jsonl(STAGES["train-rl"].output(output, "rewards"))]
    found = {key: statistics.mean(row[f"octopus/{key}"] for row in steps) for key in RL_FIELDS
             if all(f"octopus/{key}" in row for row in steps)}
    return found | {"reward": statistics.mean(row["reward"] for row in steps),
                    "step_seconds": statistics.mean(row["step_time"] for row in steps), "steps": len(steps)}


def eval_dir(seed: Seed, name: str) -> Path:
    """Where the arm ``name``'s evaluation is written."""
    return seed.root / "eval" / name.replace(" ", "_").replace("=", "")


def evaluate(seed: Seed, data: Path, name: str, arm: Arm, quick: bool = False) -> dict:
    """The arm's metrics on ``data`` with one correction round (:func:`eval_dir`); ``quick``: the answers only
    (no blank image, blind prior, verifier-gated round or pass@k samples)."""
    extra = ({"blank_image": False, "verifier": "", "headroom_samples": 1} if quick
             else {"prior_data": seed.subsets["D_A"]})
    return seed.timed(f"evaluate {name}", run_evaluate, EvaluateConfig(
        **embedded_settings(seed.number)("evaluate") | {"correction_rounds": 1, "correction": arm.correction,
                                                        "greedy_direct": False, "wait_baseline": False} | extra,
        model=str(arm.model), benchmarks=f"llava_cot={data}", output=str(eval_dir(seed, name))))[
        "benchmarks"]["llava_cot"]


def run_seed(config: OctopusExperimentConfig, seed: Seed, rl: dict[str, dict]) -> dict:
    """Train and evaluate every arm of one seed on the held-out set; writes and returns its summary: per arm the
    accuracy per round, the blank image, the blind prior of D_A, the headroom
    (:func:`experiments.harness.headroom_fields`), the per-item hits and its RL statistics."""
    checkpoints = {}
    for name, arm in train_arms(seed, rl, config.ablations).items():
        label = name.replace("/", "")  # one folder per arm under eval/
        metrics = evaluate(seed, seed.held_out, label, arm)
        checkpoints[name] = {
            "scores": [r["score"] for r in metrics["rounds"]], "blank_image": metrics["blank_image"]["score"],
            "blind_prior": metrics["blind_prior"], "sc_minus_direct": metrics["sc_minus_direct"],
            "headroom": headroom_fields(metrics),
            "hits": item_hits(eval_dir(seed, label) / PREDICTIONS_FILE)} | (
            {"rl": rl_statistics([seed.root / step for step in arm.rl_steps])} if arm.rl_steps else {})
    cold_start = json.loads(Path(STAGES["octopus-sft-data"].output(seed.root / "octopus-sft-data", "stats"))
                            .read_text())
    summary = {"seed": seed.number, "checkpoints": checkpoints, "cold_start": cold_start, "rl": rl,
               "seconds": seed.timings}
    (seed.root / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def compare(summaries: list[dict]) -> list[dict]:
    """:data:`COMPARISONS` between arms every seed trained: A − B per seed and pooled over the seeds' items
    (paired bootstrap 95 % CI, McNemar)."""
    trained = set.intersection(*(set(s["checkpoints"]) for s in summaries))

    def hits(name: str, summary: dict, which: str) -> list[bool]:
        return hit_list(summary["checkpoints"][name], which)

    return [{"a": a, "a_round": a_round, "b": b, "b_round": b_round,
             "per_seed": {str(s["seed"]): paired_difference(hits(a, s, a_round), hits(b, s, b_round))["difference"]
                          for s in summaries},
             "pooled": paired_difference([h for s in summaries for h in hits(a, s, a_round)],
                                         [h for s in summaries for h in hits(b, s, b_round)])}
            for a, a_round, b, b_round in COMPARISONS if {a, b} <= trained]


def tables(summaries: list[dict]) -> str:
    """Markdown: every arm (mean over seeds of round 0, round 1, the baselines and the headroom; the RL
    statistics) and the paired comparisons."""
    lines = ["| arm | round 0 (o1) | round 1 (o2) | fixed / broken | oracle-gated | pass@2 | maj@2 | blank image | "
             "blind prior | w→c rate | positive share gen → trained | s / step |", "|" + "---|" * 12]
    for name in summaries[0]["checkpoints"]:
        entries = [s["checkpoints"][name] for s in summaries]
        flips = [e["headroom"]["flips"][0] for e in entries]
        rl = [e.get("rl") for e in entries]
        rl_cells = ["–", "–", "–"] if None in rl else [
            cell(100 * r.get("natural_wc_rate", 0.0) for r in rl),
            f"{cell(100 * r['positive_share_generated'] for r in rl)} → "
            f"{cell(100 * r['positive_share_trained'] for r in rl)}" if "positive_share_trained" in rl[0] else "–",
            cell(r["step_seconds"] for r in rl)]
        lines.append(f"| {name} | {cell(e['scores'][0] for e in entries)} | {cell(e['scores'][1] for e in entries)} | "
                     f"{sum(f['fixed'] for f in flips)} / {sum(f['broken'] for f in flips)} | "
                     f"{cell(e['headroom']['oracle_gated'][-1] for e in entries)} | "
                     f"{cell(e['headroom']['pass_at_k'] for e in entries)} | "
                     f"{cell(e['headroom']['majority_at_k'] for e in entries)} | "
                     f"{cell(e['blank_image'] for e in entries)} | {cell(e['blind_prior'] for e in entries)} | "
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
    """Choose the RL settings (:func:`choose_rl`, or the fixed ones without a grid), run every seed (reusing
    finished summaries of the same RL settings); write ``octopus.md`` and ``octopus.json``."""
    seeds = [int(s) for s in config.seeds.split(",")]
    rl = (choose_rl(config, prepare(config, seeds[0])) if config.rl_grid
          else dict.fromkeys(("Octopus", "GSPO"), config.fixed_rl()))
    summaries = []
    for seed in seeds:
        done = Path(config.workdir) / f"seed_{seed}" / "summary.json"
        finished = json.loads(done.read_text()) if done.is_file() else {}
        summaries.append(finished if finished.get("rl") == rl else run_seed(config, prepare(config, seed), rl))
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
