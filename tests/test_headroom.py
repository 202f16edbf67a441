"""The self-correction headroom (sherlock.headroom) on constructed scores and answers: its arithmetic, not
any model's accuracy."""

import pytest

from sherlock.headroom import flip_counts, oracle_gated, rejection_rates, sample_headroom, slices, verifier_gated


def test_flips_count_each_round_against_the_one_before():
    hits = [[1, 1, 0, 0, 0.5, 0.4],  # direct
            [1, 0, 1, 0, 0.0, 1.0],  # round 1
            [0, 0, 1, 1, 0.0, 1.0]]  # round 2
    assert flip_counts(hits) == [{"fixed": 2, "broken": 2, "kept_right": 1, "kept_wrong": 1},
                                 {"fixed": 1, "broken": 1, "kept_right": 2, "kept_wrong": 2}]
    assert flip_counts(hits[:1]) == []


def test_the_oracle_keeps_a_right_answer_and_takes_a_correction_only_after_a_wrong_one():
    hits = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]
    assert oracle_gated(hits) == [25.0, 50.0, 75.0]  # the ungated rounds score 25 each
    assert oracle_gated([[0.5, 0.0], [0.0, 1.0]]) == [25.0, 75.0]  # grades: the best so far per item


def test_pass_and_majority_over_k_samples():
    scores = [[1, 0, 0], [0, 1, 0], [0, 0, 0], [0, 1, 1], [1, 0, 0]]
    answers = [["A", "B", "B"],  # majority wrong, one sample right
               [None, "C", None],  # the only readable answer
               [None, None, None],  # none readable: the first sample's score
               ["7", "8", "8"],  # majority right
               ["x", "y", None]]  # a tie: the earliest answer
    result = sample_headroom(scores, answers)
    assert result == {"k": 3, "pass_at_1": pytest.approx(100 * 5 / 15), "pass_at_k": 80.0, "majority_at_k": 60.0}
    with pytest.raises(ValueError, match="same number of samples"):
        sample_headroom([[1, 0], [1]], [["a", "b"], ["a"]])


def test_the_verifier_gate_stops_each_chain_at_the_first_accepted_answer():
    hits = [[1, 0, 0, 1, 0],  # direct
            [0, 1, 0, 0, 1],  # round 1
            [0, 0, 1, 1, 1]]  # round 2
    accepted = [[True, False, False, False, True],  # on the direct answers
                [True, True, False, False, False]]  # on round 1's
    # item 0 stops at its right direct answer; 1 at its fixed round 1; 2 and 3 run to round 2; 4 stops wrong
    assert verifier_gated(hits, accepted) == [40.0, 40.0, 80.0]
    never = [[False] * 5, [False] * 5]
    always = [[True] * 5, [True] * 5]
    assert verifier_gated(hits, never) == [100 * sum(h) / 5 for h in hits]  # ungated: the rounds themselves
    assert verifier_gated(hits, always) == [40.0] * 3  # the direct answer stands
    with pytest.raises(ValueError, match="rounds 0..1"):
        verifier_gated(hits, accepted[:1])
    assert rejection_rates(hits[0], accepted[0]) == {"rejects_right": 50.0, "rejects_wrong": 66.66666666666667}
    assert rejection_rates([1, 1], [True, False]) == {"rejects_right": 50.0, "rejects_wrong": None}


def test_slices_split_the_direct_and_last_round_by_format_and_family():
    hits = [[1, 0, 0, 1], [0, 1, 1, 1]]
    found = slices({"format": ["number", "number", "choice", "choice"], "family": ["easy"] * 4}, hits)
    assert found["format"]["number"] == {"n": 2, "direct": 50.0, "last": 50.0, "flips": {
        "fixed": 1, "broken": 1, "kept_right": 0, "kept_wrong": 0}}
    assert found["format"]["choice"]["direct"] == 50.0 and found["format"]["choice"]["last"] == 100.0
    assert found["family"]["easy"]["n"] == 4 and found["family"]["easy"]["flips"]["fixed"] == 2
    assert "flips" not in slices({"format": ["x"]}, [[1]])["format"]["x"]  # no round: no flips
