"""The lookup diagnostic: does the corrector exploit a family where checking is easier than answering?

"Which cell holds the ⟨colour⟩ ⟨kind⟩?" (:mod:`sherlock.data.synthetic`'s ``lookup`` tier) is answered by
a search over the scene and checked by one lookup. If a correction round exploited that asymmetry
(the generation–verification gap, arXiv 2412.02674), round 1 would fix at least 20 % of the wrong
answers there and break at most 5 % of the right ones; if it fixes no more than 1.5× what it breaks,
chasing a self-correction gain at this scale stops. The Sherlock chain up to Stage II (R0 →
Y^l → Sherlock-SFT → offline) is trained at the embedded pipeline's settings (``configs/embedded``)
on the task's tiers plus ``lookup``, and each checkpoint is evaluated with one correction round on a
held-out set that is half lookup items; the rule is applied per family (the task's families are the
comparison the rule is read against). Results and the prediction made before the run: docs/results.md.

``python -m experiments.lookup [--workdir runs/lookup] [--seed 0]``: resumable like the harness.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from experiments.harness import EVAL_SEED, embedded_settings, stage_runner, timer
from sherlock import recipes
from sherlock.config import help_field
from sherlock.data.llava_cot import load_llava_cot
from sherlock.data.sampling import sample_to_dir
from sherlock.data.synthetic import DIAGNOSTIC_TIERS, TIERS, generate_synthetic
from sherlock.models import embedded_base
from sherlock.models.loading import require_checkpoint
from sherlock.stages.evaluate import EvaluateConfig, run_evaluate

TRAIN_TIERS = TIERS + DIAGNOSTIC_TIERS  # a quarter of D_A and D_B are lookup items
EVAL_TIERS = ("lookup", "easy", "lookup", "medium", "lookup", "hard")  # half of the held-out set
CHECKPOINTS = {"r0": "R0", "sherlock-sft": "Sherlock-SFT", "offline": "Sherlock offline"}
FIXES_AT_LEAST = 0.20  # of the wrong answers: the corrector exploits the asymmetry …
BREAKS_AT_MOST = 0.05  # … of the right answers
STOP_RATIO = 1.5  # fixed <= 1.5 x broken: stop chasing an SC gain at this scale


@dataclass(kw_only=True)
class LookupConfig:
    workdir: str = help_field("runs/lookup", "directory of the diagnostic's data, checkpoints and tables")
    seed: int = help_field(0, "data and training seed")
    subset_size: int = help_field(500, "|D_A| = |D_B| (a quarter lookup items)")
    eval_items: int = help_field(600, "held-out items (half lookup items)")
    base_model: str = help_field("embedded", "the committed base (sherlock/models/embedded) or a checkpoint path")


def verdict(flips: dict[str, int]) -> dict:
    """Round 1's fix rate (of the wrong direct answers) and break rate (of the right ones) from its flips,
    and the diagnostic's rule: ``exploits`` (≥ 20 % fixed, ≤ 5 % broken), ``stop`` (fixed ≤ 1.5 × broken)
    or ``neither``."""
    wrong, right = flips["fixed"] + flips["kept_wrong"], flips["broken"] + flips["kept_right"]
    fix_rate = flips["fixed"] / wrong if wrong else None
    break_rate = flips["broken"] / right if right else None
    if fix_rate is not None and fix_rate >= FIXES_AT_LEAST and (break_rate or 0.0) <= BREAKS_AT_MOST:
        rule = "exploits"
    elif flips["fixed"] <= STOP_RATIO * flips["broken"]:
        rule = "stop"
    else:
        rule = "neither"
    return {"fix_rate": fix_rate, "break_rate": break_rate, "rule": rule}


def family_rows(name: str, families: dict[str, dict]) -> list[dict]:
    """One row per family of an evaluation's slices (:func:`sherlock.headroom.slices`) with its verdict."""
    return [{"checkpoint": name, "family": family, "n": entry["n"], "direct": entry["direct"],
             "round_1": entry["last"]} | entry["flips"] | verdict(entry["flips"])
            for family, entry in families.items()]


def table(rows: list[dict]) -> str:
    """Markdown of :func:`family_rows`."""
    def rate(value):
        return "–" if value is None else f"{100 * value:.1f}"

    lines = ["| checkpoint | family | n | direct | round 1 | fixed / wrong | broken / right | fix % | break % | rule |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['checkpoint']} | {r['family']} | {r['n']} | {r['direct']:.1f} | {r['round_1']:.1f} | "
                     f"{r['fixed']} / {r['fixed'] + r['kept_wrong']} | {r['broken']} / {r['broken'] + r['kept_right']}"
                     f" | {rate(r['fix_rate'])} | {rate(r['break_rate'])} | {r['rule']} |")
    return "\n".join(lines) + "\n"


def run_lookup(config: LookupConfig) -> str:
    """Train, evaluate, write ``workdir/lookup.md`` and ``lookup.json``; returns the table."""
    root = Path(config.workdir)
    timings: dict[str, float] = {}
    timed = timer(timings)
    pool = generate_synthetic(root / "data/all", 2 * config.subset_size, seed=config.seed, tiers=TRAIN_TIERS)
    held_out = generate_synthetic(root / "eval", config.eval_items, seed=EVAL_SEED, tiers=EVAL_TIERS).parent
    sample_to_dir(load_llava_cot(pool), root / "subsets", {"D_A": config.subset_size, "D_B": config.subset_size},
                  config.seed)
    d_a, d_b = (str(root / "subsets" / name) for name in ("D_A", "D_B"))
    base = str(embedded_base() if config.base_model == "embedded" else require_checkpoint(config.base_model))
    settings = embedded_settings(config.seed)
    chain = recipes.sherlock(stage_runner(root, timed, settings), base, d_a, d_b, None, online_iterations=0)
    evaluation = settings("evaluate") | {"correction_rounds": 1, "greedy_direct": False}
    rows = []
    for step, name in CHECKPOINTS.items():
        metrics = timed(f"evaluate {name}", run_evaluate, EvaluateConfig(
            **evaluation, model=str(chain[step]), benchmarks=f"llava_cot={held_out}", prior_data=d_a,
            output=str(root / "eval-results" / step)))["benchmarks"]["llava_cot"]
        rows += family_rows(name, metrics["slices"]["family"])
    found = {"config": dataclasses.asdict(config), "rows": rows, "seconds": timings}
    (root / "lookup.json").write_text(json.dumps(found, indent=2))
    text = table(rows)
    (root / "lookup.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> None:
    from experiments.__main__ import run_command

    run_command(LookupConfig, run_lookup, "python -m experiments.lookup", __doc__, argv)


if __name__ == "__main__":
    main()
