"""Stage II's rejected responses and learning rate, chosen on the validation split.

From one seed of the harness (``python -m experiments``, whose Sherlock-SFT, D_A and offline step it reuses),
Stage II (L_SC + α·L_DPO, Eqs. 4–8) is trained at each ``SCHEME:LR`` of ``--grid``: ``paper`` pairs (i ~ U{1..4},
a noised image, App. B.2) or ``on-policy`` pairs (the gold SUMMARY and CAPTION kept, the REASONING and CONCLUSION
Sherlock-SFT's own wrong ones on the clean image; ``sherlock build-preferences --scheme``). Every setting, and
Sherlock-SFT without Stage II, is scored on the validation split with one correction round. The rule, fixed
before the run: the setting whose answer after the round is best on validation (the earlier in the grid on a
tie). The chosen setting is then scored on the held-out set like the harness's checkpoints and compared, paired,
with the harness's offline step (one seed: what to rerun, not a result).

``python -m experiments.stage2 --workdir runs/rerun --seed 1 [--grid paper:2e-5,on-policy:1e-4]``, with the
harness flags of the run that trained the seed; resumable like the harness. Writes ``seed_N/stage2.md`` and
``stage2.json``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from experiments.harness import (
    DONE_FILE,
    ExperimentConfig,
    _slug,
    evaluate_all,
    hit_list,
    stage_runner,
    stage_settings,
    timer,
)
from sherlock.config import ConfigError, help_field
from sherlock.diagnostics import paired_difference
from sherlock.stages.build_preferences import PerturbationSettings
from sherlock.stages.evaluate import EvaluateConfig, run_evaluate
from sherlock.stages.registry import STAGES

NO_STAGE_II = ("none", 0.0)  # Sherlock-SFT as it is: the row every setting must beat


@dataclass(kw_only=True)
class Stage2Config(ExperimentConfig):
    seed: int = help_field(0, "the harness seed whose Sherlock-SFT and D_A Stage II starts from")
    grid: str = help_field("paper:2e-5,on-policy:2e-5,on-policy:1e-4,on-policy:3e-4",
                           "comma-separated SCHEME:LR settings of Stage II (scheme paper, released or on-policy)")

    def settings(self) -> list[tuple[str, float]]:
        """:attr:`grid` as ``(scheme, learning rate)`` pairs; refuses a malformed one."""
        settings = []
        for setting in self.grid.split(","):
            scheme, _, rate = setting.strip().partition(":")
            try:
                settings.append((scheme, float(rate)))
            except ValueError:
                raise ConfigError(f"grid: {setting!r} is not SCHEME:LR (e.g. on-policy:1e-4)") from None
            try:
                PerturbationSettings(scheme=scheme).check_perturbation()
            except ConfigError as error:
                raise ConfigError(f"grid: {setting!r}: {error}") from None
            if settings[-1][1] <= 0:
                raise ConfigError(f"grid: {setting!r} needs a positive learning rate")
        return settings


def choose(rows: list[dict]) -> dict:
    """The row with the best accuracy after the correction round; the earlier on a tie."""
    return max(rows, key=lambda row: (row["round_1"], -rows.index(row)))


def table(rows: list[dict], chosen: dict) -> str:
    """Markdown: one row per setting on the validation split."""
    lines = ["| Stage II | pairs | direct | round 1 | SC − direct [95% CI] | fixed / broken | |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        paired = r["sc_minus_direct"]
        lines.append(f"| {r['label']} | {r['pairs'] if r['pairs'] is not None else '–'} | {r['direct']:.1f} | "
                     f"{r['round_1']:.1f} | {paired['difference']:+.1f} [{paired['ci_low']:+.1f}, "
                     f"{paired['ci_high']:+.1f}] | {paired['fixed']} / {paired['broken']} | "
                     f"{'chosen' if r is chosen else ''} |")
    return "\n".join(lines) + "\n"


def label(scheme: str, rate: float) -> str:
    """A Stage II setting's row name (and, slugged, its validation folder)."""
    return "none (Sherlock-SFT)" if (scheme, rate) == NO_STAGE_II else f"{scheme} pairs, lr {rate:g}"


def run_stage2(config: Stage2Config) -> str:
    """Train and validate every setting, choose, score the choice on the held-out set; returns the tables."""
    workdir, seed = Path(config.workdir), config.seed
    root = workdir / f"seed_{seed}"
    sft = root / "sherlock-sft"
    if not (sft / DONE_FILE).is_file():
        raise FileNotFoundError(f"{sft}: train the seed's Sherlock-SFT first (python -m experiments --workdir "
                                f"{config.workdir} --seeds {seed} --recipes sherlock)")
    grid = config.settings()
    timings: dict[str, float] = {}
    timed = timer(timings)
    settings = stage_settings(config, seed)
    run = stage_runner(root, timed, settings.__getitem__)
    harness_setting = ("paper", config.preference_learning_rate)  # the seed's own offline step, reused
    d_a = root / "subsets" / "D_A"

    rows, models, pairs = [], {}, {}
    for scheme, rate in [NO_STAGE_II, *grid]:
        if (scheme, rate) == NO_STAGE_II:
            model = sft
        else:
            if scheme not in pairs:
                pairs[scheme] = run("preferences" if scheme == "paper" else f"stage2/preferences-{scheme}",
                                    "build-preferences", f"{scheme} pairs", model=sft, data=d_a, scheme=scheme)
            step = "sherlock-offline" if (scheme, rate) == harness_setting else f"stage2/offline-{scheme}-{rate:g}"
            model = run(step, "train-preferences.offline", f"Stage II {label(scheme, rate)}", model=sft,
                        data=pairs[scheme], learning_rate=rate)
        metrics = timed(f"validate {label(scheme, rate)}", run_evaluate, EvaluateConfig(
            model=str(model), benchmarks=f"llava_cot={workdir / 'validation'}", correction_rounds=1,
            greedy_direct=False, blank_image=False, wait_baseline=False, headroom_samples=1,
            max_new_tokens=config.max_new_tokens, generation_batch_size=config.generation_batch_size, seed=seed,
            output=str(root / "stage2" / "validation" / _slug(label(scheme, rate)))))["benchmarks"]["llava_cot"]
        stats = Path(STAGES["build-preferences"].output(pairs[scheme], "stats")) if scheme in pairs else None
        rows.append({"scheme": scheme, "learning_rate": rate, "label": label(scheme, rate),
                     "pairs": json.loads(stats.read_text())["num_pairs"] if stats else None,
                     "direct": metrics["rounds"][0]["score"], "round_1": metrics["rounds"][1]["score"],
                     "sc_minus_direct": metrics["sc_minus_direct"]})
        models[(scheme, rate)] = model
    chosen = choose(rows)
    text = f"Validation split ({config.validation_items} items), seed {seed}, one correction round:\n\n" + table(
        rows, chosen)
    found = {"config": dataclasses.asdict(config), "validation": rows, "chosen": chosen["label"]}

    choice = (chosen["scheme"], chosen["learning_rate"])
    if choice != harness_setting:  # scored like the harness's checkpoints (its offline step's evaluation reused)
        offline, entry = evaluate_all(config, seed, {"Sherlock offline": root / "sherlock-offline",
                                                     f"Stage II {chosen['label']}": models[choice]}, timed).values()
        found["held_out"] = {which: paired_difference(hit_list(entry, which), hit_list(offline, which))
                             for which in ("direct", "sc")} | {"scores": entry["scores"],
                                                                "offline_scores": offline["scores"]}
        text += "\nHeld-out, the chosen setting − the seed's Sherlock offline (paper pairs, lr "
        text += f"{config.preference_learning_rate:g}), paired: " + "; ".join(
            f"{which} {d['difference']:+.1f} [{d['ci_low']:+.1f}, {d['ci_high']:+.1f}] ({d['fixed']} / {d['broken']})"
            for which, d in (("direct", found["held_out"]["direct"]), ("after SC", found["held_out"]["sc"]))) + "\n"
    found["seconds"] = timings
    (root / "stage2.json").write_text(json.dumps(found, indent=2))
    (root / "stage2.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> None:
    from experiments.__main__ import run_command

    run_command(Stage2Config, run_stage2, "python -m experiments.stage2", __doc__, argv)


if __name__ == "__main__":
    main()
