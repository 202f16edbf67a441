"""The multi-seed experiment's bookkeeping: which recipes may run, and the mean ± sd table."""

import dataclasses

import pytest

from experiments.harness import (
    ExperimentConfig,
    base_gate,
    headroom_fields,
    headroom_table,
    results_json,
    results_table,
    run_experiment,
)


def _entry(direct, sc, hits_direct, hits_sc):
    return {"scores": [direct, sc], "baselines": {"greedy_direct": direct, "blank_image": 10.0, "blind_prior": 40.0},
            "sc_minus_direct": {"difference": sc - direct}, "hits": {"direct": hits_direct, "sc": hits_sc}}


def test_table_has_the_checkpoints_every_seed_has_in_paper_order():
    summaries = [{"seed": 0, "checkpoints": {"SCL": _entry(50.0, 50.0, "10", "01"),
                                             "R0": _entry(50.0, 100.0, "10", "11"),
                                             "STIC": _entry(0.0, 0.0, "00", "00")}},
                 {"seed": 1, "checkpoints": {"SCL": _entry(50.0, 50.0, "01", "10"),
                                             "R0": _entry(0.0, 50.0, "00", "10")}}]
    table = results_table(summaries, rounds=1).splitlines()
    assert table[0] == ("| checkpoint | direct | +SC round 1 | SC − direct [95% CI] | greedy direct | blank image "
                        "| blind prior |")
    assert [row.split(" | ")[:3] for row in table[2:]] == [["| R0", "25.0 ± 35.4", "75.0 ± 35.4"],
                                                          ["| SCL", "50.0 ± 0.0", "50.0 ± 0.0"]]  # no STIC
    assert table[2].split(" | ")[3].startswith("+50.0 [")  # pooled over both seeds' items: 1 of 4 → 3 of 4
    pooled = results_json(summaries)["checkpoints"]["R0"]
    assert pooled["sc_minus_direct"]["pooled"]["difference"] == 50.0
    assert pooled["sc_minus_direct"]["per_seed"] == {"0": 50.0, "1": 50.0}
    assert results_json(summaries)["comparisons"] == []  # none of COMPARISONS has both checkpoints
    assert pooled["seeds"]["1"] == {"direct": 0.0, "sc_rounds": [50.0], "greedy_direct": 0.0, "blank_image": 10.0,
                                    "blind_prior": 40.0}
    summaries[1]["checkpoints"]["R0"]["headroom"] = headroom_fields({
        "samples": {"k": 2, "pass_at_1": 25.0, "pass_at_k": 50.0, "majority_at_k": 25.0}, "oracle_gated": [0.0, 50.0],
        "verifier_gated": [0.0, 50.0], "flips": [{"fixed": 1, "broken": 0, "kept_right": 0, "kept_wrong": 1}],
        "perception": {"cells_exact": 0.5}})
    seed = results_json(summaries)["checkpoints"]["R0"]["seeds"]["1"]
    assert {key: seed[key] for key in ("pass_at_k", "majority_at_k", "oracle_gated", "verifier_gated")} == {
        "pass_at_k": 50.0, "majority_at_k": 25.0, "oracle_gated": [0.0, 50.0], "verifier_gated": [0.0, 50.0]}
    assert seed["flips"][0]["fixed"] == 1 and "k" not in seed and "perception" not in seed


def test_headroom_table_sets_what_the_same_compute_buys_beside_the_rounds():
    def entry(direct, last, pass_1, pass_k, majority, oracle, verifier, fixed, broken, **more):
        return _entry(direct, last, "", "") | {"headroom": {
            "pass_at_1": pass_1, "pass_at_k": pass_k, "majority_at_k": majority, "oracle_gated": [direct, oracle],
            "verifier_gated": [direct, verifier], "flips": [{"fixed": fixed, "broken": broken}], **more}}

    summaries = [{"seed": 0, "checkpoints": {"Sherlock-SFT": entry(50.0, 48.0, 50.0, 70.0, 51.0, 60.0, 49.0, 3, 4,
                                                                     wait=47.0),
                                            "R0": entry(40.0, 10.0, 40.0, 60.0, 38.0, 45.0, 40.0, 1, 30)}},
                 {"seed": 1, "checkpoints": {"Sherlock-SFT": entry(54.0, 52.0, 52.0, 74.0, 55.0, 64.0, 53.0, 5, 6,
                                                                     wait=51.0),
                                            "R0": _entry(40.0, 10.0, "", "")}}]  # R0 without samples on seed 1
    rows = headroom_table(summaries).splitlines()
    assert rows[0].startswith("| checkpoint | direct | last round | pass@1 | pass@k | maj@k | maj@k − pass@1 |")
    assert len(rows) == 3  # R0 is left out: one seed did not measure its headroom
    assert rows[2].split(" | ") == ["| Sherlock-SFT", "52.0 ± 2.8", "50.0 ± 2.8", "51.0 ± 1.4", "72.0 ± 2.8",
                                    "53.0 ± 2.8", "2.0 ± 1.4", "62.0 ± 2.8", "51.0 ± 2.8", "49.0 ± 2.8", "8 / 10 |"]
    summaries[1]["checkpoints"]["Sherlock-SFT"]["headroom"].pop("wait")
    assert headroom_table(summaries[1:]).splitlines()[2].split(" | ")[9] == "–"


def test_base_gate_criteria():
    diagnostics = {"accuracy": 0.6, "blank_image_accuracy": 0.3, "blind_prior_accuracy": 0.4,
                   "perception": {"cells_exact": 0.85, "summary_exact": 0.97}}
    assert all(base_gate(diagnostics).values())
    failing = base_gate(diagnostics | {"accuracy": 0.9, "blank_image_accuracy": 0.5})
    assert [criterion for criterion, ok in failing.items() if not ok] == [
        "R0 accuracy in [0.55, 0.75]", "blank image <= blind prior"]


@pytest.mark.parametrize("recipes", ["scl", "sherlock,dar", "sherlock,dar,stic", "sherlock,dpo"])
def test_recipes_need_sherlock_first_and_stic_before_dar(recipes, tmp_path):
    with pytest.raises(ValueError, match="recipes must include sherlock"):
        run_experiment(ExperimentConfig(workdir=str(tmp_path), recipes=recipes))


def test_a_finished_stage_is_not_run_again_unless_its_config_changed(tmp_path):
    import dataclasses
    import os
    import time
    from pathlib import Path

    from experiments.harness import DONE_FILE, timer

    @dataclasses.dataclass
    class Config:
        output: str
        learning_rate: float = 1e-3

    calls = []

    def stage(config):
        calls.append(config.learning_rate)
        Path(config.output).mkdir(exist_ok=True)
        return Path(config.output) / "model"

    timings = {}
    timed = timer(timings)
    first = timed("R0", stage, Config(str(tmp_path / "r0")))
    again = timed("R0", stage, Config(str(tmp_path / "r0")))
    assert first == again == tmp_path / "r0" / "model" and calls == [1e-3] and "R0" in timings
    timed("R0", stage, Config(str(tmp_path / "r0"), learning_rate=2e-3))
    assert calls == [1e-3, 2e-3]

    @dataclasses.dataclass
    class Grown(Config):  # a field added to the stage since: at its default, the finished stage stands
        rewrite: bool = False

    timed("R0", stage, Grown(str(tmp_path / "r0"), learning_rate=2e-3))
    assert calls == [1e-3, 2e-3]
    timed("R0", stage, Grown(str(tmp_path / "r0"), learning_rate=2e-3, rewrite=True))
    assert calls == [1e-3, 2e-3, 2e-3]

    @dataclasses.dataclass
    class Evaluate:
        output: str
        model: str
        learning_rate: float = 0.0  # what the stage above records

    evaluation = Evaluate(str(tmp_path / "eval"), str(first))
    timed("evaluate R0", stage, evaluation)
    timed("evaluate R0", stage, evaluation)
    assert len(calls) == 4  # resumed
    os.utime(tmp_path / "eval" / DONE_FILE, (time.time() - 60,) * 2)  # R0 retrained after its evaluation
    timed("evaluate R0", stage, evaluation)
    assert len(calls) == 5
    timed("evaluate R0", stage, evaluation)
    assert len(calls) == 5


def test_the_rl_settings_are_chosen_on_validation_at_equal_steps():
    """Octopus: the best o2 (the first of equals); GSPO: its best learning rate at Octopus's steps, not its best
    overall; a malformed grid is refused with the cell."""
    from experiments.octopus import OctopusExperimentConfig, chosen_settings
    from sherlock.config import ConfigError

    rows = [{"learning_rate": 1e-5, "max_steps": 40, "Octopus o2": 40.0, "GSPO n=8": 45.0},
            {"learning_rate": 1e-4, "max_steps": 40, "Octopus o2": 44.0, "GSPO n=8": 41.0},
            {"learning_rate": 1e-4, "max_steps": 120, "Octopus o2": 44.0, "GSPO n=8": 50.0}]
    assert chosen_settings(rows) == {"Octopus": {"learning_rate": 1e-4, "max_steps": 40},
                                     "GSPO": {"learning_rate": 1e-5, "max_steps": 40}}
    config = OctopusExperimentConfig(rl_grid="1e-5x40,2E-4X120")
    assert config.grid() == [{"learning_rate": 1e-5, "max_steps": 40}, {"learning_rate": 2e-4, "max_steps": 120}]
    for grid in ("1e-5", "1e-5x40,x3", "0x40", "1e-4x0"):
        with pytest.raises(ConfigError, match="rl_grid"):
            OctopusExperimentConfig(rl_grid=grid).grid()


def test_stage2_grid_is_parsed_and_the_best_round_on_validation_is_chosen():
    """experiments.stage2: SCHEME:LR settings (a malformed one refused with the setting); the rule picks the
    best accuracy after the round, the earlier setting on a tie, whatever the direct answer."""
    from experiments.stage2 import Stage2Config, choose
    from sherlock.config import ConfigError

    assert Stage2Config(grid="paper:2e-5, on-policy:1E-4").settings() == [("paper", 2e-5), ("on-policy", 1e-4)]
    for grid in ("paper", "paper:x", "noisy:1e-4", "on-policy:0"):
        with pytest.raises(ConfigError, match="grid: "):
            Stage2Config(grid=grid).settings()
    rows = [{"label": "none", "direct": 60.0, "round_1": 58.0}, {"label": "a", "direct": 50.0, "round_1": 61.0},
            {"label": "b", "direct": 62.0, "round_1": 61.0}, {"label": "c", "direct": 70.0, "round_1": 60.0}]
    assert choose(rows)["label"] == "a"


def test_checkpoint_comparisons_are_paired_per_seed_and_pooled():
    from experiments.harness import compare_checkpoints, comparisons_table

    seeds = [{"seed": k, "checkpoints": {"Sherlock-SFT": _entry(0, 0, "1100", "1110"),
                                         "R0": _entry(0, 0, "1000", "0000")}} for k in (0, 1)]
    (row,) = compare_checkpoints(seeds)
    assert (row["a"], row["b"], row["round"]) == ("Sherlock-SFT", "R0", "direct")
    assert row["per_seed"] == {"0": 25.0, "1": 25.0} and row["pooled"]["difference"] == 25.0
    assert (row["pooled"]["fixed"], row["pooled"]["broken"]) == (2, 0)
    assert "| Sherlock-SFT − R0 | direct | +25.0, +25.0 | +25.0 [" in comparisons_table([row])


def test_one_seed_runs_the_pipelines_wiring_then_its_own_steps_and_resumes(tmp_path, monkeypatch):
    """A real seed at toy sizes (the committed base, 8 items, one step per stage): the Sherlock chain of
    :mod:`sherlock.recipes` in its step folders, the control, the w/o-L_SC ablation, the gate, the
    summary and tables; a second call reuses the finished seed, and ``experiments.stage2`` reuses its offline
    step beside a setting it trains. The online iteration is left out: at
    this size no item's answers agree, so it has no pairs (tests/stages runs that stage with a judge
    that always agrees)."""
    import json

    from experiments import harness as experiment

    config = ExperimentConfig(workdir=str(tmp_path), seeds="0", subset_size=8, pool_size=8, online=False,
                              eval_items=8, validation_items=8, sft_epochs=1.0,
                              correction_rounds=1, max_new_tokens=24, generation_batch_size=16, recipes="sherlock")
    experiment.run_experiment(config)
    root = tmp_path / "seed_0"
    for step in ("r0", "rejected/rejected.jsonl", "sherlock-sft", "preferences/pairs.jsonl", "sherlock-offline",
                 "sft_control", "offline_wo_L_SC", "validation_r0/diagnostics.json"):
        assert (root / step).exists(), step
    summary = json.loads((root / "summary.json").read_text())
    assert set(summary["checkpoints"]) == set(experiment.SHERLOCK_CHECKPOINTS) - {"offline, static β", "online iter 1"}
    assert {"R0 (SFT on D_A)", "Sherlock-SFT", "Sherlock offline training", "SFT control"} <= set(summary["seconds"])
    assert summary["offline_pairs"]["num_pairs"] >= 1 and "online_pairs" not in summary
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["checkpoints"]["Sherlock offline"]["seeds"]["0"]["sc_rounds"].__len__() == 1

    monkeypatch.setattr(experiment, "run_seed", lambda *args: pytest.fail("a finished seed ran again"))
    experiment.run_experiment(config)

    # Stage II's settings on the validation split from this seed: the harness's own offline step is reused
    from experiments.stage2 import Stage2Config, run_stage2

    offline_done = root / "sherlock-offline" / experiment.DONE_FILE
    finished = offline_done.stat().st_mtime
    stage2 = Stage2Config(**dataclasses.asdict(config), seed=0, grid=f"paper:{config.preference_learning_rate},"
                                                                     "on-policy:1e-4")
    text = run_stage2(stage2)
    found = json.loads((root / "stage2.json").read_text())
    assert [row["label"] for row in found["validation"]] == ["none (Sherlock-SFT)", "paper pairs, lr 2e-05",
                                                             "on-policy pairs, lr 0.0001"]
    assert offline_done.stat().st_mtime == finished and not (root / "stage2" / "offline-paper-2e-05").exists()
    assert (root / "stage2" / "offline-on-policy-0.0001").is_dir()
    assert found["validation"][1]["pairs"] == summary["offline_pairs"]["num_pairs"]
    chosen = max(found["validation"], key=lambda row: row["round_1"])
    assert found["chosen"] == chosen["label"] and "| chosen |" in text
    assert ("held_out" in found) == (chosen["label"] != "paper pairs, lr 2e-05")
    if "held_out" in found:  # the choice against the harness's offline step, on the held-out items
        assert found["held_out"]["sc"]["n"] == config.eval_items and "Held-out, the chosen setting" in text
        assert found["held_out"]["offline_scores"] == summary["checkpoints"]["Sherlock offline"]["scores"]


def test_lookup_rule_reads_fix_and_break_rates_off_the_flips():
    """The diagnostic's stop rule (experiments.lookup) on constructed flips: rates over the direct answer's
    wrong and right items, 'exploits' at ≥ 20 % fixed and ≤ 5 % broken, 'stop' at fixed ≤ 1.5 × broken."""
    from experiments.lookup import family_rows, table, verdict

    exploits = verdict({"fixed": 10, "kept_wrong": 40, "broken": 2, "kept_right": 48})
    assert exploits == {"fix_rate": 0.2, "break_rate": 0.04, "rule": "exploits"}
    assert verdict({"fixed": 10, "kept_wrong": 40, "broken": 3, "kept_right": 47})["rule"] == "neither"  # 6 % broken
    assert verdict({"fixed": 9, "kept_wrong": 41, "broken": 6, "kept_right": 44})["rule"] == "stop"  # 9 <= 1.5 x 6
    assert verdict({"fixed": 10, "kept_wrong": 40, "broken": 6, "kept_right": 44})["rule"] == "neither"
    assert verdict({"fixed": 0, "kept_wrong": 0, "broken": 0, "kept_right": 5}) == {
        "fix_rate": None, "break_rate": 0.0, "rule": "stop"}  # nothing wrong to fix: no gain to chase
    rows = family_rows("R0", {"lookup": {"n": 100, "direct": 50.0, "last": 58.0,
                                         "flips": {"fixed": 10, "kept_wrong": 40, "broken": 2, "kept_right": 48}}})
    assert rows == [{"checkpoint": "R0", "family": "lookup", "n": 100, "direct": 50.0, "round_1": 58.0, "fixed": 10,
                     "kept_wrong": 40, "broken": 2, "kept_right": 48, "fix_rate": 0.2, "break_rate": 0.04,
                     "rule": "exploits"}]
    assert table(rows).splitlines()[2] == ("| R0 | lookup | 100 | 50.0 | 58.0 | 10 / 50 | 2 / 50 | 20.0 | 4.0 | "
                                           "exploits |")


def _octopus_entry(direct: str, second: str, rl: dict | None = None) -> dict:
    """An arm's summary entry whose scores, flips and headroom follow from its per-item hits."""
    d, s = [c == "1" for c in direct], [c == "1" for c in second]
    flips = {"fixed": sum(not a and b for a, b in zip(d, s)), "broken": sum(a and not b for a, b in zip(d, s))}
    entry = {"scores": [100 * sum(d) / len(d), 100 * sum(s) / len(s)], "blank_image": 0.0, "blind_prior": 25.0,
             "sc_minus_direct": {}, "hits": {"direct": direct, "sc": second},
             "headroom": {"flips": [flips], "oracle_gated": [100 * sum(d) / len(d), 100 * sum(a or b for a, b in
                                                                                          zip(d, s)) / len(d)],
                          "pass_at_k": 50.0, "majority_at_k": 25.0}}
    return entry | ({"rl": rl} if rl else {})


def test_octopus_arms_are_compared_on_the_same_items_and_written_as_results_rows(tmp_path):
    """Octopus − each arm, paired per seed and pooled; the table's flips and RL columns; the rows under
    ``octopus`` of a results.json, which keeps what it held."""
    import json

    from experiments.octopus import (
        COMPARISONS,
        OctopusExperimentConfig,
        compare,
        rl_statistics,
        run_octopus_experiment,
        tables,
    )

    rewards = tmp_path / "stage" / "rewards.jsonl"
    rewards.parent.mkdir()
    rewards.write_text("".join(json.dumps({"reward": r, "step_time": t, "octopus/natural_wc_rate": w,
                                           "octopus/positive_share_generated": 0.25,
                                           "octopus/positive_share_trained": p, "octopus/pool_size": 4.0,
                                           "octopus/copied_rows": 0.0}) + "\n"
                               for r, t, w, p in ((0.2, 1.0, 0.0, 0.5), (0.4, 3.0, 0.5, 0.25))))
    rl = rl_statistics([tmp_path / "stage"])
    assert rl == pytest.approx({"reward": 0.3, "step_seconds": 2.0, "steps": 2, "natural_wc_rate": 0.25,
                                "positive_share_generated": 0.25, "positive_share_trained": 0.375,
                                "pool_size": 4.0, "copied_rows": 0.0})
    names = {name for a, _, b, _ in COMPARISONS for name in (a, b)}
    fixed = {"Octopus": {"max_steps": 120}, "GSPO": {"max_steps": 120}}  # the RL settings without a grid
    summaries = [{"seed": seed, "cold_start": {"wc_examples": 3}, "rl": fixed, "checkpoints": {
        name: _octopus_entry("1100", "1110", rl) if name == "Octopus" else _octopus_entry("1000", "1000")
        for name in names}} for seed in (0, 1)]
    rows = {(r["a"], r["a_round"], r["b"], r["b_round"]): r for r in compare(summaries)}
    final = rows["Octopus", "sc", "GSPO n=8", "direct"]  # Octopus's o2 against GSPO's one answer: 1110 vs 1000
    assert final["per_seed"] == {"0": 50.0, "1": 50.0}
    assert (final["pooled"]["difference"], final["pooled"]["fixed"], final["pooled"]["broken"]) == (50.0, 4, 0)
    assert rows["Octopus", "direct", "GSPO n=8", "direct"]["pooled"]["difference"] == 25.0
    assert rows["Octopus", "sc", "Octopus", "direct"]["per_seed"] == {"0": 25.0, "1": 25.0}  # o2 − o1
    without_ablation = [s | {"checkpoints": {k: v for k, v in s["checkpoints"].items() if k != "w/o Stage I"}}
                        for s in summaries]  # --ablations false: its comparisons are left out, the rest kept
    assert [(r["a"], r["b"]) for r in compare(without_ablation)] == [
        (a, b) for a, _, b, _ in COMPARISONS if "w/o Stage I" not in (a, b)]
    text = tables(summaries)
    assert "| Octopus | 50.0 ± 0.0 | 75.0 ± 0.0 | 2 / 0 | 75.0 ± 0.0 |" in text
    assert "| 25.0 ± 0.0 | 25.0 ± 0.0 | 25.0 ± 0.0 → 37.5 ± 0.0 | 2.0 ± 0.0 |" in text
    assert "| Octopus, round 1 − GSPO n=8, round 0 | +50.0, +50.0 | +50.0 [" in text
    for summary in summaries:  # finished seeds: the experiment only reads them
        (tmp_path / f"seed_{summary['seed']}").mkdir()
        (tmp_path / f"seed_{summary['seed']}" / "summary.json").write_text(json.dumps(summary))
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"checkpoints": {"R0": {}}}))
    assert run_octopus_experiment(OctopusExperimentConfig(workdir=str(tmp_path), seeds="0,1",
                                                          results_json=str(results))) == text
    written = json.loads(results.read_text())
    assert written["checkpoints"] == {"R0": {}} and written["octopus"] == json.loads(
        (tmp_path / "octopus.json").read_text())
    section = written["octopus"]
    octopus = section["checkpoints"]["Octopus"]["1"]
    assert (octopus["direct"], octopus["sc_rounds"], octopus["flips"]) == (50.0, [75.0], [{"fixed": 1, "broken": 0}])
    assert octopus["rl"]["positive_share_trained"] == pytest.approx(0.375) and "rl" not in section[
        "checkpoints"]["R0"]["0"]
