"""The recipes on the synthetic task, per seed, through the stage functions (docs/results.md).

For each seed: draw D_A, D_B and an unlabeled pool D_U from one synthetic set; start from the committed base model
(a tiny Mllama pre-trained on perception questions, :mod:`sherlock.stages.pretrain_perception`; one for every seed,
as the paper starts from one VLM); R0 (SFT on D_A) → Y^l on D_B → Sherlock-SFT (from the base model) and its
direct-only control (SFT on D_A ∪ D_B at the same optimizer steps, paper Table 4) → offline pairs on D_A → Sherlock
offline (+ the static-β and w/o-L_SC ablations) → online iteration 1 on D_U. The sibling recipes start from the
same R0 with the embedded pipeline's settings (``configs/embedded``): SCL (two-turn pairs on D_B → DPO + SFT term),
STIC (description pairs on D_U → stage 1 → descriptions of a D_A subset → stage 2) and Octopus (cold start on D_B →
SFT → RL Stage I → Stage II on D_U; evaluated by continuing its response; its baselines and ablations:
:mod:`experiments.octopus`). The recipes' steps are the pipelines' own wiring (:mod:`sherlock.recipes`), run here
as stage functions with the experiment's settings; the control, the ablations and the gate are the experiment's
additions. R0 is diagnosed on a validation split (the gate of the base model); every checkpoint is evaluated on one
held-out set with the paper's protocol (sampled direct answer, greedy correction rounds) beside its baselines
(greedy direct, blank image, blind prior of D_A).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sherlock import recipes
from sherlock.config import help_field, load_config
from sherlock.data.llava_cot import load_data, load_llava_cot
from sherlock.data.sampling import sample_to_dir, write_subsets
from sherlock.data.schema import read_jsonl
from sherlock.data.synthetic import CHOICE_FRACTION, generate_synthetic
from sherlock.diagnostics import paired_difference
from sherlock.models import embedded_base
from sherlock.models.loading import require_checkpoint
from sherlock.stages.diagnose import DiagnoseConfig, run_diagnose
from sherlock.stages.evaluate import PREDICTIONS_FILE, EvaluateConfig, run_evaluate
from sherlock.stages.registry import STAGES, preset, stage
from sherlock.stages.sft import SFTStageConfig, run_sft
from sherlock.stages.train_preferences import TrainPreferencesConfig, run_train_preferences

EVAL_SEED = 1_000_003  # one held-out set for every seed
VALIDATION_SEED = 3_000_017  # one validation set: settings and the base-model gate are chosen on it
SHERLOCK_CHECKPOINTS = ("R0", "SFT control (D_A ∪ D_B)", "Sherlock-SFT", "Sherlock offline", "offline, static β",
                        "offline, w/o L_SC", "online iter 1")
# the base model's gate on the validation split (R0 diagnosed there)
GATE = {"R0 accuracy in [0.55, 0.75]": lambda d: 0.55 <= d["accuracy"] <= 0.75,
        "blank image <= blind prior": lambda d: d["blank_image_accuracy"] <= d["blind_prior_accuracy"],
        "occupied cells exact >= 0.80": lambda d: d["perception"]["cells_exact"] >= 0.80,
        "SUMMARY right >= 0.95": lambda d: d["perception"]["summary_exact"] >= 0.95}
RECIPE_CHECKPOINTS = {"scl": ("SCL",), "stic": ("STIC stage 1", "STIC"), "dar": ("R0 + DaR", "STIC + DaR"),
                      "octopus": ("Octopus cold start", "Octopus Stage I", "Octopus")}
CHECKPOINTS = SHERLOCK_CHECKPOINTS + tuple(name for names in RECIPE_CHECKPOINTS.values() for name in names)


@dataclass(kw_only=True)
class ExperimentConfig:
    workdir: str = help_field("runs/results", "directory of the seeds' outputs and the summary tables")
    seeds: str = help_field("0,1,2", "comma-separated seeds (one data set and training run each)")
    subset_size: int = help_field(1000, "|D_A| = |D_B| (chosen on the validation split, docs/results.md)")
    pool_size: int = help_field(500, "|D_U|, unlabeled")
    online: bool = help_field(True, "run online iteration 1 (Stage III) from Sherlock offline")
    online_pairs: int = help_field(150, "pairs of the online iteration")
    eval_items: int = help_field(500, "held-out items (one set for every seed)")
    validation_items: int = help_field(500, "validation items: R0's gate")
    choice_fraction: float = help_field(CHOICE_FRACTION, "share of the synthetic questions with options asked as "
                                                         "multiple choice (0.3 in the runs before 2026-12-05)")
    base_model: str = help_field("embedded", "the committed perception-pretrained base (sherlock/models/embedded), "
                                             "or a checkpoint path")
    sft_epochs: float = help_field(16.0, "epochs of R0, Sherlock-SFT and the SFT control")
    sft_learning_rate: float = help_field(2e-3, "learning rate of the SFT stages")
    preference_learning_rate: float = help_field(2e-5, "learning rate of offline preference training")
    online_learning_rate: float = help_field(1e-5, "learning rate of the online iteration")
    preference_epochs: float = help_field(1.0, "epochs of preference training")
    preference_batch_size: int = help_field(8, "pairs per step")
    alpha: float = help_field(0.25, "weight α of L_DPO")
    sc_beta: float = help_field(0.25, "β base of L_SC")
    dpo_beta: float = help_field(0.1, "β base of L_DPO")
    correction_rounds: int = help_field(3, "greedy self-correction rounds of every evaluation")
    static_beta_ablation: bool = help_field(False, "also train the static-β ablation (the paper's 0.2–1.2-point "
                                                   "effect is below what 3 seeds resolve here)")
    max_new_tokens: int = help_field(160, "longest generated response")
    generation_batch_size: int = help_field(128, "prompts per generate call")
    recipes: str = help_field("sherlock,scl,stic,dar", "recipes to run: SCL, STIC and octopus reuse the seed's R0 "
                                                       "(configs/embedded settings; Octopus evaluated by continuing "
                                                       "its response); dar: R0 and STIC evaluated with STIC's "
                                                       "describe-and-respond prompting")


def _slug(name: str) -> str:
    """Directory name of a checkpoint label ("offline, w/o L_SC" -> "offline_wo_L_SC")."""
    return name.replace(",", "").replace("/", "").replace(" ", "_")


DONE_FILE = "experiment_stage.json"  # a finished stage's result and seconds, beside its outputs


def retrained_inputs(stage_config, finished: float) -> list[Path]:
    """The input stages of ``stage_config`` (a path field naming a step folder or a folder inside one, holding
    :data:`DONE_FILE`) that finished after ``finished`` (a time stamp)."""
    paths = [Path(value) for value in dataclasses.asdict(stage_config).values() if isinstance(value, str) and value]
    markers = {folder / DONE_FILE for path in paths for folder in (path, path.parent)}
    return [marker.parent for marker in markers if marker.is_file() and marker.stat().st_mtime > finished]


def same_config(recorded: str, stage_config) -> bool:
    """Whether the config ``recorded`` (JSON) ran what ``stage_config`` would: every recorded field has the same
    value, and a field added to the config since is at its default (it changes nothing the stage did)."""
    def plain(value):
        return json.loads(json.dumps(value, default=str))

    before, now = json.loads(recorded), plain(dataclasses.asdict(stage_config))
    defaults = {f.name: f.default for f in dataclasses.fields(stage_config) if f.default is not dataclasses.MISSING}
    return all(key in now and now[key] == value for key, value in before.items()) and all(
        key in defaults and value == plain(defaults[key]) for key, value in now.items() if key not in before)


def timer(timings: dict[str, float]):
    """``timed(name, stage function, config)``: run the stage and record its wall seconds.

    A stage whose output directory holds :data:`DONE_FILE` from an earlier run of the same config
    (:func:`same_config`), newer than every input stage's (:func:`retrained_inputs`), is not run again: an
    interrupted seed resumes at its first unfinished stage, and a stage whose input was retrained runs again.
    """
    def timed(name, function, stage_config):
        done = Path(stage_config.output) / DONE_FILE
        config = json.dumps(dataclasses.asdict(stage_config), sort_keys=True, default=str)
        if (done.is_file() and same_config((previous := json.loads(done.read_text()))["config"], stage_config)
                and not retrained_inputs(stage_config, done.stat().st_mtime)):
            timings[name] = previous["seconds"]
            return Path(previous["path"]) if "path" in previous else previous["result"]
        start = time.perf_counter()
        result = function(stage_config)
        timings[name] = round(time.perf_counter() - start, 1)
        stored = {"path": str(result)} if isinstance(result, Path) else {"result": result}
        done.write_text(json.dumps(stored | {"config": config, "seconds": timings[name]}))
        return result

    return timed


def evaluate_all(config: ExperimentConfig, seed: int, models: dict, timed, **fields) -> dict[str, dict]:
    """Held-out evaluation of every named checkpoint: per checkpoint its summary entry.

    ``scores``: accuracy per round (direct, then each correction round); ``baselines``: greedy
    direct, blank image, blind prior of D_A; ``sc_minus_direct``: the paired statistics of the last
    round against the direct answer; ``perception``; ``hits``: per item 1/0 of the direct answer
    and of the last round (for statistics pooled over seeds). ``fields`` are further
    :class:`EvaluateConfig` settings (e.g. ``describe_first``).
    """
    eval_dir = Path(config.workdir) / "eval"
    root = Path(config.workdir) / f"seed_{seed}"
    results = {}
    for name, model in models.items():
        output = root / "eval" / _slug(name)
        metrics = timed(f"evaluate {name}", run_evaluate, EvaluateConfig(
            model=str(model), benchmarks=f"llava_cot={eval_dir}", correction_rounds=config.correction_rounds,
            output=str(output), prior_data=str(root / "subsets" / "D_A"),
            max_new_tokens=config.max_new_tokens, generation_batch_size=config.generation_batch_size, seed=seed,
            **fields))["benchmarks"]["llava_cot"]
        results[name] = {"scores": [r["score"] for r in metrics["rounds"]],
                         "baselines": {key: metrics[key]["score"] for key in ("greedy_direct", "blank_image")}
                         | {"blind_prior": metrics["blind_prior"]},
                         "sc_minus_direct": metrics.get("sc_minus_direct"), "perception": metrics.get("perception"),
                         "departure": metrics.get("departure"), "hits": item_hits(output / PREDICTIONS_FILE),
                         "headroom": headroom_fields(metrics)}
    return results


HEADROOM_FIELDS = ("pass_at_1", "pass_at_k", "majority_at_k", "oracle_gated", "verifier_gated", "flips", "wait")


def headroom_fields(metrics: dict) -> dict:
    """What the rounds did beside what the same compute buys (:mod:`sherlock.headroom`), as results.json
    holds it per checkpoint and seed: the k-sample numbers, the gated rounds, the flips, the "Wait"
    continuation (where measured)."""
    found = dict(metrics.get("samples") or {}) | {key: metrics[key] for key in ("oracle_gated", "verifier_gated",
                                                                                "flips") if key in metrics}
    if metrics.get("wait"):
        found["wait"] = metrics["wait"]["score"]
    return {key: found[key] for key in HEADROOM_FIELDS if key in found}


def item_hits(predictions: Path) -> dict[str, str]:
    """``{"direct": "0110…", "sc": …}``: correctness per held-out item of round 0 and of the last round."""
    rows = read_jsonl(predictions)
    return {"direct": "".join(str(int(r["correct"][0])) for r in rows),
            "sc": "".join(str(int(r["correct"][-1])) for r in rows)}


def hit_list(entry: dict, which: str) -> list[bool]:
    """A checkpoint entry's :func:`item_hits` of ``which`` ("direct" or "sc"), one bool per held-out item."""
    return [c == "1" for c in entry["hits"][which]]


def stage_runner(root: Path, timed, settings: Callable[[str], dict]):
    """The ``run`` callback of :mod:`sherlock.recipes` for the experiment: each step its stage function on
    ``settings(preset)``, its inputs and the output ``root/<step>``, timed and resumable (:func:`timer`);
    hands on a path (:meth:`Stage.handed_on`)."""
    def run(step: str, preset_name: str, title: str, **inputs) -> Path:
        record = stage(preset_name.split(".")[0])
        fields = {key: str(value) if isinstance(value, Path) else value for key, value in inputs.items()}
        output = root / step
        timed(title, record.run, load_config(record.config, overrides=settings(preset_name) | fields
                                             | {"output": str(output)}))
        return Path(record.handed_on(output, **fields))

    return run


def subset_dirs(root: Path) -> dict[str, str]:
    """The seed's D_A, D_B and D_U directories."""
    return {name: str(root / "subsets" / name) for name in ("D_A", "D_B", "D_U")}


def embedded_settings(seed: int) -> Callable[[str], dict]:
    """The sibling recipes' settings: the embedded pipeline's presets (``configs/embedded``) with the seed."""
    return lambda name: preset(name, "embedded") | {"seed": seed}


def run_scl(run, root: Path, subsets: dict[str, str]) -> dict[str, Path]:
    """SCL from the seed's R0 (:func:`sherlock.recipes.scl`)."""
    return recipes.scl(run, root / "r0", subsets["D_B"])


def run_stic(run, root: Path, subsets: dict[str, str]) -> dict[str, Path]:
    """STIC from the seed's R0 (:func:`sherlock.recipes.stic`)."""
    return recipes.stic(run, root / "r0", subsets["D_A"], subsets["D_U"])


def run_octopus(run, root: Path, subsets: dict[str, str]) -> dict[str, Path]:
    """Octopus from the seed's R0 (:func:`sherlock.recipes.octopus`): cold start on D_B, RL on D_U."""
    return recipes.octopus(run, root / "r0", subsets["D_B"], subsets["D_U"])


def describe_and_respond(run, root: Path, subsets: dict[str, str]) -> dict[str, Path]:
    """The STIC model (after the stic recipe) and its starting R0, for evaluation with DaR prompting."""
    return {"R0 + DaR": root / "r0", "STIC + DaR": root / "stic-stage2"}


# recipe -> (checkpoints by step, extra evaluation settings); dar needs stic's model
RECIPES = {"scl": (run_scl, {}), "stic": (run_stic, {}), "dar": (describe_and_respond, {"describe_first": True}),
           "octopus": (run_octopus, {"correction": "continue"})}
LABELS = {"r0": "R0", "sherlock-sft": "Sherlock-SFT", "offline": "Sherlock offline", "online-1": "online iter 1",
          "scl": "SCL", "stic-stage1": "STIC stage 1", "stic": "STIC", "octopus-sft": "Octopus cold start",
          "octopus-stage1": "Octopus Stage I", "octopus": "Octopus"}  # a recipe's checkpoint -> its row here


def run_recipes(config: ExperimentConfig, seed: int, summary: dict) -> dict:
    """Add the sibling recipes missing from a seed's summary (trained from its R0) and rewrite it."""
    root = Path(config.workdir) / f"seed_{seed}"
    for recipe in config.recipes.split(","):
        if recipe == "sherlock" or set(RECIPE_CHECKPOINTS[recipe]) <= set(summary["checkpoints"]):
            continue
        timings: dict[str, float] = {}
        timed = timer(timings)
        train, evaluation = RECIPES[recipe]
        subsets = subset_dirs(root)
        models = train(stage_runner(root, timed, embedded_settings(seed)), root, subsets)
        summary["checkpoints"] |= evaluate_all(config, seed, {LABELS.get(k, k): v for k, v in models.items()}, timed,
                                               **evaluation)
        summary["seconds"] |= timings
        (root / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _read(path: str) -> dict:
    return json.loads(Path(path).read_text())


def base_gate(diagnostics: dict) -> dict[str, bool]:
    """Each criterion of :data:`GATE` on R0's validation diagnostics."""
    return {criterion: bool(test(diagnostics)) for criterion, test in GATE.items()}


def stage_settings(config: ExperimentConfig, seed: int) -> dict[str, dict]:
    """The settings of every Sherlock step of a seed, by preset name (:func:`stage_runner`'s ``settings``)."""
    root = Path(config.workdir) / f"seed_{seed}"
    sampling = dict(max_new_tokens=config.max_new_tokens, generation_batch_size=config.generation_batch_size, seed=seed)
    # checkpoints every 200 steps: an interrupted SFT stage resumes inside the stage, not from its start
    sft = dict(learning_rate=config.sft_learning_rate, epochs=config.sft_epochs, seed=seed, logging_steps=50,
               save_steps=200)
    preference = dict(learning_rate=config.preference_learning_rate, epochs=config.preference_epochs,
                      batch_size=config.preference_batch_size, alpha=config.alpha, sc_beta=config.sc_beta,
                      dpo_beta=config.dpo_beta, seed=seed, logging_steps=10,
                      reference_cache=str(root / "reference_cache"))
    return {"sft.r0": sft, "sft.sherlock": sft, "sample-rejected": sampling, "build-preferences": sampling,
            "train-preferences.offline": preference,
            "online": preference | sampling | {"num_pairs": config.online_pairs, "reference_cache": None,
                                               "learning_rate": config.online_learning_rate}}


def run_seed(config: ExperimentConfig, seed: int) -> dict:
    """All Sherlock stages and evaluations for one seed; returns its summary (see :func:`evaluate_all`)."""
    root = Path(config.workdir) / f"seed_{seed}"
    timings: dict[str, float] = {}
    timed = timer(timings)

    task = {"choice_fraction": config.choice_fraction}
    pool_file = generate_synthetic(root / "data/all", 2 * config.subset_size + config.pool_size, seed=seed, **task)
    generate_synthetic(Path(config.workdir) / "eval", config.eval_items, seed=EVAL_SEED, **task)  # the held-out set
    generate_synthetic(Path(config.workdir) / "validation", config.validation_items, seed=VALIDATION_SEED, **task)
    pool = load_llava_cot(pool_file)
    sample_to_dir(pool, root / "subsets",
                  {"D_A": config.subset_size, "D_B": config.subset_size, "D_U": config.pool_size}, seed)
    subsets = subset_dirs(root)
    union = root / "control" / "D_AB"  # the direct-only control's data
    write_subsets({"D_AB": load_data(subsets["D_A"]).records + load_data(subsets["D_B"]).records},
                  pool_file.parent, union.parent, seed=seed, source="D_A + D_B")
    base = str(embedded_base() if config.base_model == "embedded" else require_checkpoint(config.base_model))

    settings = stage_settings(config, seed)
    sampling, sft, preference = (settings[name] for name in ("sample-rejected", "sft.r0", "train-preferences.offline"))
    chain = recipes.sherlock(stage_runner(root, timed, settings.__getitem__), base, subsets["D_A"], subsets["D_B"],
                             subsets["D_U"], online_iterations=int(config.online))
    gate = timed("diagnose R0 (validation)", run_diagnose, DiagnoseConfig(
        model=str(chain["r0"]), data=str(Path(config.workdir) / "validation"), output=str(root / "validation_r0"),
        prior_data=subsets["D_A"], correction_rounds=1, **sampling))
    control = timed("SFT control", run_sft, SFTStageConfig(
        model=base, data=str(union), output=str(root / "sft_control"), **sft))  # same sequences per epoch
    models = {LABELS[name]: model for name, model in chain.items()}
    models["SFT control (D_A ∪ D_B)"] = control
    ablations = {"offline, w/o L_SC": {"use_sc": False}} | (
        {"offline, static β": {"dynamic_beta": False}} if config.static_beta_ablation else {})
    for name, switches in ablations.items():  # the offline step's data and reference cache, one switch changed
        models[name] = timed(name, run_train_preferences, TrainPreferencesConfig(
            **preference | switches, model=str(chain["sherlock-sft"]), data=str(root / "preferences"),
            output=str(root / _slug(name))))

    results = evaluate_all(config, seed, models, timed)
    summary = {"seed": seed, "checkpoints": results, "seconds": timings,
               "r0_validation": gate, "gate": base_gate(gate),
               "rejected": _read(STAGES["sample-rejected"].output(root / "rejected", "stats")),
               "offline_pairs": _read(STAGES["build-preferences"].output(root / "preferences", "stats"))}
    if config.online:
        summary["online_pairs"] = _read(STAGES["build-preferences"].output(
            STAGES["online"].output(root / "online-1", "pairs", iteration=1), "stats"))
    (root / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def cell(values) -> str:
    """A table cell: the mean over seeds, ± the sd where there are several."""
    values = list(values)
    mean = statistics.mean(values)
    return f"{mean:.1f} ± {statistics.stdev(values):.1f}" if len(values) > 1 else f"{mean:.1f}"


def results_table(summaries: list[dict], rounds: int) -> str:
    """Markdown: mean ± sd over seeds of every round and baseline, and SC − direct (paired, pooled)."""
    header = ("| checkpoint | direct | " + " | ".join(f"+SC round {k}" for k in range(1, rounds + 1))
              + " | SC − direct [95% CI] | greedy direct | blank image | blind prior |")
    lines = [header, "|" + "---|" * (rounds + 6)]
    for name in (n for n in CHECKPOINTS if all(n in s["checkpoints"] for s in summaries)):
        entries = [s["checkpoints"][name] for s in summaries]
        per_round = list(zip(*(e["scores"] for e in entries)))
        paired = pooled_sc_minus_direct(entries)
        baselines = [cell([e["baselines"][key] for e in entries]) for key in ("greedy_direct", "blank_image",
                                                                              "blind_prior")]
        lines.append(f"| {name} | " + " | ".join(cell(v) for v in per_round)
                     + f" | {paired['difference']:+.1f} [{paired['ci_low']:+.1f}, {paired['ci_high']:+.1f}] | "
                     + " | ".join(baselines) + " |")
    return "\n".join(lines) + "\n"


def headroom_table(summaries: list[dict]) -> str:
    """Markdown: beside every checkpoint's direct answer and last round, what the same compute buys otherwise
    (mean ± sd over seeds; :mod:`sherlock.headroom`): pass@1, pass@k and majority@k of k sampled direct answers,
    the oracle- and verifier-gated last round, the "Wait" continuation, and round 1's fixed / broken answers
    summed over the seeds. A round can beat the direct answer by re-drawing only where maj@k − pass@1 > 0."""
    lines = ["| checkpoint | direct | last round | pass@1 | pass@k | maj@k | maj@k − pass@1 | oracle-gated | "
             "verifier-gated | Wait | round 1 fixed / broken |", "|" + "---|" * 11]
    for name in (n for n in CHECKPOINTS if all("pass_at_k" in s["checkpoints"].get(n, {}).get("headroom", {})
                                               for s in summaries)):
        entries = [s["checkpoints"][name] for s in summaries]
        headroom = [e["headroom"] for e in entries]
        flips = [h["flips"][0] for h in headroom]
        wait = cell(h["wait"] for h in headroom) if all("wait" in h for h in headroom) else "–"
        lines.append(f"| {name} | {cell(e['scores'][0] for e in entries)} | {cell(e['scores'][-1] for e in entries)} | "
                     + " | ".join(cell(values) for values in (
                         [h["pass_at_1"] for h in headroom], [h["pass_at_k"] for h in headroom],
                         [h["majority_at_k"] for h in headroom],
                         [h["majority_at_k"] - h["pass_at_1"] for h in headroom],
                         [h["oracle_gated"][-1] for h in headroom], [h["verifier_gated"][-1] for h in headroom]))
                     + f" | {wait} | {sum(f['fixed'] for f in flips)} / {sum(f['broken'] for f in flips)} |")
    return "\n".join(lines) + "\n"


def pooled_sc_minus_direct(entries: list[dict]) -> dict:
    """SC − direct over the items of every seed together (paired bootstrap 95 % CI, McNemar)."""
    direct = [hit for e in entries for hit in hit_list(e, "direct")]
    corrected = [hit for e in entries for hit in hit_list(e, "sc")]
    return paired_difference(corrected, direct)


# (A, B, round): A − B on the same held-out items, "direct" or "sc" (after the last correction round)
COMPARISONS = (("Sherlock-SFT", "SFT control (D_A ∪ D_B)", "direct"), ("Sherlock-SFT", "SFT control (D_A ∪ D_B)", "sc"),
               ("Sherlock offline", "Sherlock-SFT", "direct"), ("Sherlock offline", "Sherlock-SFT", "sc"),
               ("Sherlock offline", "offline, w/o L_SC", "sc"), ("online iter 1", "Sherlock offline", "sc"),
               ("Sherlock-SFT", "R0", "direct"))


def compare_checkpoints(summaries: list[dict]) -> list[dict]:
    """:data:`COMPARISONS` present in every seed: A − B in points per seed and pooled over the seeds'
    items (paired bootstrap 95 % CI, McNemar)."""
    rows = []
    for a, b, which in COMPARISONS:
        if not all(a in s["checkpoints"] and b in s["checkpoints"] for s in summaries):
            continue
        hits = {name: [hit for s in summaries for hit in hit_list(s["checkpoints"][name], which)] for name in (a, b)}
        per_seed = {str(s["seed"]): paired_difference(*(hit_list(s["checkpoints"][name], which)
                                                        for name in (a, b)))["difference"] for s in summaries}
        rows.append({"a": a, "b": b, "round": which, "per_seed": per_seed,
                     "pooled": paired_difference(hits[a], hits[b])})
    return rows


def comparisons_table(rows: list[dict]) -> str:
    """Markdown of :func:`compare_checkpoints`."""
    lines = ["| A − B | answers | per seed | pooled [95% CI] | fixed / broken | McNemar p |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        pooled = row["pooled"]
        lines.append(f"| {row['a']} − {row['b']} | {'after SC' if row['round'] == 'sc' else 'direct'} | "
                     + ", ".join(f"{v:+.1f}" for v in row["per_seed"].values())
                     + f" | {pooled['difference']:+.1f} [{pooled['ci_low']:+.1f}, {pooled['ci_high']:+.1f}] | "
                     f"{pooled['fixed']} / {pooled['broken']} | {pooled['p_mcnemar']:.3g} |")
    return "\n".join(lines) + "\n"


def results_json(summaries: list[dict]) -> dict:
    """``docs/results.json``: per checkpoint and seed the accuracies, baselines and headroom
    (:data:`HEADROOM_FIELDS`, where the seed's evaluation measured them); per checkpoint the paired 95 % CI of
    SC − direct pooled over the seeds' items and the per-seed differences."""
    checkpoints = {}
    for name in (n for n in CHECKPOINTS if all(n in s["checkpoints"] for s in summaries)):
        entries = {str(s["seed"]): s["checkpoints"][name] for s in summaries}
        checkpoints[name] = {
            "seeds": {seed: {"direct": e["scores"][0], "sc_rounds": e["scores"][1:],
                             "greedy_direct": e["baselines"]["greedy_direct"],
                             "blank_image": e["baselines"]["blank_image"], "blind_prior": e["baselines"]["blind_prior"]}
                      | e.get("headroom", {}) for seed, e in entries.items()},
            "sc_minus_direct": {"per_seed": {seed: e["sc_minus_direct"]["difference"] for seed, e in entries.items()},
                                "pooled": pooled_sc_minus_direct(list(entries.values()))}}
    return {"units": "accuracy in %, held-out synthetic items", "checkpoints": checkpoints,
            "comparisons": compare_checkpoints(summaries)}


def run_experiment(config: ExperimentConfig) -> str:
    """Run every seed (reusing finished ones' summaries) and write ``workdir/results.md``."""
    recipes = config.recipes.split(",")
    unknown = set(recipes) - {"sherlock", *RECIPES}
    if unknown or "sherlock" not in recipes or "dar" in recipes and "stic" not in recipes[:recipes.index("dar")]:
        raise ValueError(f"recipes must include sherlock (the others start from its R0), dar only after stic; "
                         f"unknown: {sorted(unknown)}")
    summaries = []
    for seed in (int(s) for s in config.seeds.split(",")):
        done = Path(config.workdir) / f"seed_{seed}" / "summary.json"
        summary = json.loads(done.read_text()) if done.is_file() else run_seed(config, seed)
        summaries.append(run_recipes(config, seed, summary))
    table = (results_table(summaries, config.correction_rounds) + "\n" + headroom_table(summaries) + "\n"
             + comparisons_table(compare_checkpoints(summaries)))
    Path(config.workdir, "results.md").write_text(table)
    Path(config.workdir, "results.json").write_text(json.dumps(results_json(summaries), indent=2))
    Path(config.workdir, "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))
    return table
