import json

import pytest
from scipy.stats import binomtest

from sherlock.data.schema import Record
from sherlock.data.synthetic import make_item
from sherlock.diagnostics import (
    BlindPrior,
    caption_shapes,
    departure_histogram,
    departure_stage,
    leave_one_out_prior_accuracy,
    mcnemar_p,
    paired_difference,
    perception_scores,
    stage_text,
)


def _record(question, answer, answer_type="number", index=0):
    return Record(f"r{index}", "i.png", question, "", answer, answer_type)


def test_blind_prior_names_the_most_likely_answer_per_question():
    training = [_record("How many red shapes are there?", a, index=k) for k, a in enumerate("1123")]
    training += [_record("What colour is it?\nOptions:\nA. red\nB. blue", "B", "choice", 10),
                 _record("What colour is it?", "blue", "text", 11)]
    prior = BlindPrior(training)
    assert prior.predict("How many red shapes are there?") == "1"
    # multiple choice: the option whose text is the stem's most likely answer, wherever it is listed
    assert prior.predict("What colour is it?\nOptions:\nA. blue\nB. red\nC. green") == "A"
    assert prior.predict("Never seen?") == "1"  # unseen stem: the most likely answer overall
    assert prior.accuracy(["How many red shapes are there?"] * 2, ["1", "2"]) == 0.5
    # leave-one-out: each record is predicted without its own answer
    # answers 1, 1, 2, 3: without one "1" the counts tie and the first in sorted order ("1") is named
    assert leave_one_out_prior_accuracy(training[:4]) == 0.5
    with pytest.raises(ValueError, match="labelled"):
        BlindPrior([_record("q", None)])


def test_perception_scores_and_departure_stage():
    gold = make_item(0, 3, "hard")[0].response
    caption = stage_text(gold, "CAPTION")
    shapes = caption_shapes(caption)
    assert len(shapes) == int(caption.split(" ")[3])  # "The image shows N shapes: …"
    cell, (size, colour, kind) = next(iter(shapes.items()))
    other = "blue" if colour != "blue" else "red"
    recoloured = gold.replace(f"{cell}: a {size} {colour} {kind}", f"{cell}: a {size} {other} {kind}", 1)
    scores = perception_scores([gold, recoloured], [gold, gold])
    assert scores["caption_exact"] == 0.5 and scores["cells_exact"] == 1.0 and scores["summary_exact"] == 1.0
    assert scores["colour_at_cell"] == pytest.approx(1 - 1 / (2 * len(shapes)))
    assert scores["kind_at_cell"] == 1.0
    dropped = gold.replace(f"{cell}: a {size} {colour} {kind}", "", 1)
    assert perception_scores([dropped], [gold])["cells_exact"] == 0.0

    assert departure_stage(gold, gold) == "none"
    assert departure_stage(recoloured, gold) == "CAPTION"
    wrong_answer = gold.replace(f"<CONCLUSION>{stage_text(gold, 'CONCLUSION')}", "<CONCLUSION>zzz")
    assert departure_stage(wrong_answer, gold) == "CONCLUSION"
    assert departure_histogram([recoloured, wrong_answer], [gold, gold]) == {
        "SUMMARY": 0, "CAPTION": 1, "REASONING": 0, "CONCLUSION": 1, "none": 0}


@pytest.mark.parametrize("fixed, broken", [(0, 0), (3, 0), (7, 2), (20, 31)])
def test_mcnemar_is_the_exact_binomial_test(fixed, broken):
    expected = binomtest(min(fixed, broken), fixed + broken, 0.5).pvalue if fixed + broken else 1.0
    assert mcnemar_p(fixed, broken) == pytest.approx(expected)


def test_paired_difference_counts_fixed_and_broken_items():
    before = [True] * 50 + [False] * 50
    after = [True] * 45 + [False] * 5 + [True] * 20 + [False] * 30
    paired = paired_difference(after, before, seed=0)
    assert paired["difference"] == pytest.approx(15.0) and (paired["fixed"], paired["broken"]) == (20, 5)
    assert paired["ci_low"] < 15.0 < paired["ci_high"] and paired["ci_low"] > 0
    assert paired["p_mcnemar"] < 0.01
    same = paired_difference(before, before)
    assert same["difference"] == same["ci_low"] == same["ci_high"] == 0.0 and same["p_mcnemar"] == 1.0
    with pytest.raises(ValueError, match="equal"):
        paired_difference([True], [True, False])




def test_diagnose_command_writes_the_baselines(tiny_model_dir, subset_dir, tmp_path):
    from sherlock.cli import main

    main(["diagnose", "--model", str(tiny_model_dir), "--data", str(subset_dir), "--output", str(tmp_path / "d"),
          "--num-items", "5", "--max-new-tokens", "8"])
    diagnostics = json.loads((tmp_path / "d/diagnostics.json").read_text())
    assert diagnostics["num_items"] == 5
    for key in ("accuracy", "blank_image_accuracy", "blind_prior_accuracy", "greedy_accuracy"):
        assert 0.0 <= diagnostics[key] <= 1.0, key
    assert len(diagnostics["sc_rounds"]) == 1 and diagnostics["blind_prior_source"] == "leave-one-out on data"
    assert set(diagnostics["departure"]) == {"SUMMARY", "CAPTION", "REASONING", "CONCLUSION", "none"}
    assert sum(diagnostics["departure"].values()) == round(5 * (1 - diagnostics["accuracy"]))
    assert set(diagnostics["perception"]) >= {"caption_exact", "cells_exact", "colour_at_cell", "summary_exact"}


def test_loss_terms_of_different_scales_get_their_own_panels(tmp_path):
    from sherlock.plots import plot_loss_curves, scale_groups

    assert scale_groups({"loss/sc": [1.2, 1.1], "loss/dpo": [0.7, 0.6], "loss/sft": [40.0, 38.0]}) == [
        ["loss/dpo", "loss/sc"], ["loss/sft"]]
    history = [{"step": k, "loss": 30.0, "loss/sc": 1.0, "loss/sft": 40.0} for k in (1, 2)]
    assert plot_loss_curves(history, tmp_path / "loss.png") and (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
