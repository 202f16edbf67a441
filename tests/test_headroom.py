"""The self-correction headroom (sherlock.headroom) on constructed scores and answers: its arithmetic, not
any model's accuracy."""

import pytest

from sherlock.headroom import flip_counts, oracle_gated, sample_headroom


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
