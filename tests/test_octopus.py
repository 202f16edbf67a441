"""Octopus's text-level pieces on constructed rollouts, against hand-computed expectations (octopus-spec §2)."""

import random

import pytest

from sherlock.octopus import (
    FORMATS,
    Pair,
    masked_attempt,
    one_round,
    pair_pool,
    reward,
    select_pairs,
    split_attempts,
)
from sherlock.reasoning import SEP

BOXED, STAGES = FORMATS["think-boxed"], FORMATS["stages"]


def boxed(answer: str) -> str:
    return f"<think>count them</think> The answer is \\boxed{{{answer}}}"


def staged(answer: str) -> str:
    return (f"<SUMMARY>s</SUMMARY><CAPTION>c</CAPTION><REASONING>r</REASONING>"
            f"<CONCLUSION>{answer}</CONCLUSION>")


def test_a_rollout_splits_at_the_tags_and_each_attempt_is_cut_after_its_answer():
    text = boxed("3") + " trailing" + SEP + boxed("4") + " more"
    attempts = split_attempts(text, BOXED)
    assert text[:attempts.o1] == boxed("3")
    assert text[attempts.o2[0]:attempts.o2[1]] == boxed("4")
    assert attempts.corrects
    plain = split_attempts(staged("2") + " x", STAGES)
    assert (plain.o1, plain.o2, plain.corrects) == (len(staged("2")), None, False)
    unfinished = split_attempts(boxed("3") + SEP + "<think>hmm", BOXED)
    assert unfinished.o2 is None and unfinished.corrects
    assert split_attempts("no answer" + SEP + boxed("1"), BOXED).o1 is None


def test_one_round_cuts_a_second_correction():
    first = boxed("1") + SEP + boxed("2")
    assert one_round(first + "\n\n<self-correction>\n" + boxed("3")) == first + "\n\n"
    assert one_round(first) == first


@pytest.mark.parametrize("o1, o2, expected", [("2", "3", 1.0), ("3", "3", 0.75), ("2", "4", 0.0), ("3", "2", -0.25)])
def test_the_reward_is_the_shaped_table_plus_a_tenth_for_format(o1, o2, expected):
    """R = 0.9·r′ + 0.1·min(f(o1), f(o2)), gold 3 (Eqs. 3, 6)."""
    assert reward(boxed(o1) + SEP + boxed(o2), "3", "number", BOXED) == pytest.approx(0.9 * expected + 0.1)
    assert reward(staged(o1) + SEP + staged(o2), "3", "number", STAGES) == pytest.approx(0.9 * expected + 0.1)
    assert reward(f"\\boxed{{{o1}}}" + SEP + boxed(o2), "3", "number", BOXED) == pytest.approx(0.9 * expected)


def test_the_released_codes_caps_and_the_reward_without_the_tag():
    same = boxed("3") + SEP + boxed("3")
    assert reward(same, "3", "number", BOXED) == pytest.approx(0.9 * 0.75 + 0.1)
    assert reward(same, "3", "number", BOXED, caps=True) == pytest.approx(0.9 * 0.5 + 0.1)  # o1 = o2
    empty_first = "<think>x</think> \\boxed{}" + SEP + boxed("3")
    assert reward(empty_first, "3", "number", BOXED, caps=True) == pytest.approx(0.0 + 0.1)  # o1 without an answer
    malformed = boxed("2") + SEP + "so \\boxed{3}"
    assert reward(malformed, "3", "number", BOXED, caps=True) == pytest.approx(0.9 * 0.5)  # f(o2) = 0
    assert reward(boxed("3"), "3", "number", BOXED) == pytest.approx(0.9 * 0.5 + 0.1)  # no tag: 0.9·(c − ½) + 0.1·f
    assert reward("3", "3", "number", BOXED) == pytest.approx(0.45)
    assert reward(staged("4"), "3", "number", STAGES) == pytest.approx(-0.45 + 0.1)


def test_the_format_checks():
    assert BOXED.well_formed(" < think >a</think> b \\boxed{1} c")
    assert not BOXED.well_formed("<think>a</think><think>b</think> \\boxed{1}")
    assert not BOXED.well_formed("\\boxed{1}")
    assert STAGES.well_formed(" " + staged("1") + "\n")
    assert not STAGES.well_formed(staged("1") + " extra")
    assert not STAGES.well_formed(staged("1").replace("<CAPTION>c</CAPTION>", ""))


def test_the_pool_holds_every_complete_first_and_second_attempt_by_class():
    first = [True, False, None]  # rollout 2 has no complete o1
    second = [None, True, False]  # rollout 0 has no o2
    pool = pair_pool(first, second, include_same=True)
    assert {(p.first, p.second, p.kind) for p in pool} == {(0, 1, "cc"), (0, 2, "cw"), (1, 1, "wc"), (1, 2, "ww")}
    assert len(pair_pool([True] * 4, [False] * 4, include_same=True)) == 16  # n²
    assert len(pair_pool([True] * 4, [False] * 4, include_same=False)) == 12  # Alg. 1 skips i = j


def _pool(kinds: dict[str, int]) -> list[Pair]:
    return [Pair(k, k, kind) for kind, count in kinds.items() for k in range(count)]


def test_the_papers_rule_fills_positives_to_half_the_group_w_to_c_first():
    """Fig. 3 (n = 4): 1 right of 4 originals → 3 positives added, then 1 negative: the group is 4/4."""
    pool = _pool({"wc": 2, "cc": 3, "cw": 3, "ww": 6})
    chosen = select_pairs(pool, [True, False, False, False], "paper", random.Random(0))
    kinds = [p.kind for p in chosen]
    assert kinds[:3] == ["wc", "wc", "cc"] and kinds[3] in ("cw", "ww")


def test_the_released_codes_rule_caps_w_to_c_and_adds_as_many_c_to_c():
    """k = 2 of n = 8: h = 3 → 3 w→c + 3 c→c + 1 c→w + 1 w→w (spec §2.4); the paper's rule takes 6 positives."""
    pool = _pool({"wc": 12, "cc": 4, "cw": 12, "ww": 36})
    final = [True, True] + [False] * 6
    code = select_pairs(pool, final, "code", random.Random(0))
    assert sorted(p.kind for p in code) == ["cc"] * 3 + ["cw"] + ["wc"] * 3 + ["ww"]
    paper = select_pairs(pool, final, "paper", random.Random(0))
    kinds = [p.kind for p in paper]
    assert kinds.count("wc") == 6 and len(kinds) == 8 and set(kinds[6:]) <= {"cw", "ww"}


def test_short_pools_random_and_none():
    assert len(select_pairs(_pool({"ww": 2}), [False] * 4, "paper", random.Random(0))) == 2  # the caller copies
    assert select_pairs(_pool({"wc": 5}), [False] * 4, "none", random.Random(0)) == []
    assert len(select_pairs(_pool({"wc": 5, "ww": 5}), [False] * 4, "random", random.Random(0))) == 4
    with pytest.raises(ValueError, match="selection must be one of"):
        select_pairs([], [False], "best", random.Random(0))


def test_stage_masks():
    assert [masked_attempt(kind, "every") for kind in ("wc", "cc", "cw", "ww", None)] == [True] * 4 + [False]
    assert [masked_attempt(kind, "changed") for kind in ("wc", "cc", "cw", "ww", None)] == \
        [True, False, True, False, False]
    assert not masked_attempt("wc", "none")


def test_the_cold_start_mix_is_the_largest_draw_in_the_ratio():
    from sherlock.stages.octopus_sft_data import mix

    wrong, right = mix(list(range(100)), list(range(10)), 0.6, random.Random(0))
    assert (len(wrong), len(right)) == (15, 10)  # 25 examples at 6 : 4
    wrong, right = mix(list(range(6)), list(range(100)), 0.6, random.Random(0))
    assert (len(wrong), len(right)) == (6, 4)


def test_an_octopus_response_loads_as_data_and_a_broken_attempt_is_quarantined(tmp_path):
    from PIL import Image

    from sherlock.data.llava_cot import load_data
    from sherlock.reasoning import attempts

    staged = ("<SUMMARY>s</SUMMARY><CAPTION>c</CAPTION><REASONING>r</REASONING><CONCLUSION>{}</CONCLUSION>")
    assert attempts(staged.format(1) + SEP + staged.format(2)) == [staged.format(1), staged.format(2)]
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    lines = [{"id": str(k), "image": "a.png", "answer": "2", "conversations": [
        {"from": "human", "value": "How many?"}, {"from": "gpt", "value": response}]}
        for k, response in enumerate([staged.format(1) + SEP + staged.format(2)] * 120
                                     + [staged.format(1) + SEP + "<SUMMARY>s</SUMMARY>"])]
    import json
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert len(load_data(tmp_path / "data.jsonl").records) == 120
    quarantined = (tmp_path / "data.quarantine.jsonl").read_text()
    assert '"line": 121' in quarantined and "missing stage(s): CAPTION" in quarantined


def test_cold_start_data_refuses_a_model_with_no_answer_in_the_format(tiny_model_dir, subset_dir, tmp_path):
    """A random tiny model writes no 4-stage answer: no example can be built, and the stage says so."""
    from sherlock.config import ConfigError
    from sherlock.stages.octopus_sft_data import OctopusSFTDataConfig, run_octopus_sft_data

    config = OctopusSFTDataConfig(model=str(tiny_model_dir), data=str(subset_dir), output=str(tmp_path / "out"),
                                  samples=2, max_new_tokens=8)
    with pytest.raises(ConfigError, match="no cold-start example.*'malformed_samples': 32"):
        run_octopus_sft_data(config)


def test_a_gold_response_becomes_an_attempt_of_either_format():
    """Cold-start o2: the gold 4-stage response as is (``stages``), or its first three stages thought and its short
    answer boxed (``think-boxed``), which the format check accepts and the extractor reads back."""
    from sherlock.answers import is_correct

    gold = ("<SUMMARY>Count the circles.</SUMMARY>\n\n<CAPTION>Two red circles.</CAPTION>\n\n"
            "<REASONING>There are 2.</REASONING>\n\n<CONCLUSION>There are 2 circles.</CONCLUSION>")
    assert STAGES.gold_attempt(gold, "2") == gold
    attempt = BOXED.gold_attempt(gold, "2")
    assert attempt == ("<think>\nCount the circles.\n\nTwo red circles.\n\nThere are 2.\n</think>\n\n\\boxed{2}")
    assert BOXED.well_formed(attempt) and is_correct(attempt, "2", "number", [])
    assert reward(attempt + SEP + attempt, "2", "number", BOXED) == pytest.approx(0.9 * 0.75 + 0.1)
    assert BOXED.instruction.startswith(BOXED.answer_instruction) and STAGES.answer_instruction == ""


def test_a_protocol_file_round_trips_and_a_hostile_one_is_refused(tmp_path):
    """``self_correction.json`` is data from storage: only the two keys with their known values load; a folder
    without one answers Sherlock's way; a data file's protocol is its folder's."""
    from sherlock.protocol import PROTOCOL_FILE, SHERLOCK, Protocol, ProtocolError, read_protocol, write_protocol

    assert read_protocol(tmp_path) == SHERLOCK == Protocol("prompt", "stages")
    write_protocol(tmp_path, Protocol("continue", "think-boxed"))
    assert read_protocol(tmp_path) == read_protocol(tmp_path / "data.jsonl") == Protocol("continue", "think-boxed")
    assert Protocol("continue", "think-boxed").answer("<think>x</think> \\boxed{3}") == "3"
    assert SHERLOCK.answer("<CONCLUSION>3</CONCLUSION>") == "3" and SHERLOCK.answer("\\boxed{3}") is None
    for text, reason in (('{"correction": "exec"}', "correction must be one of"),
                         ('{"correction": "prompt", "module": "os"}', "expected"), ('["continue"]', "expected"),
                         ('{"response_format": 1}', "expected"), ("{", "not JSON"),
                         ('{"response_format": "../x"}', "response_format must be one of")):
        (tmp_path / PROTOCOL_FILE).write_text(text)
        with pytest.raises(ProtocolError, match=reason):
            read_protocol(tmp_path)


def test_the_rewrite_prompt_carries_the_question_the_truth_the_reference_and_the_format():
    """§2.1 mixed sampling (paper App. A.3): o1 is the reference answer; the format's own line asks for the format;
    a rewriter without rewrite is refused."""
    from sherlock.config import ConfigError
    from sherlock.octopus import REWRITE_ROLE, rewrite_prompt
    from sherlock.stages.octopus_sft_data import OctopusSFTDataConfig

    prompt = rewrite_prompt("How many circles?", "2", "<think>three</think> \\boxed{3}", BOXED)
    assert prompt.startswith(REWRITE_ROLE) and "Question: How many circles?\n\nGround Truth: 2\n\n" in prompt
    assert "Reference Answer:\n<think>three</think> \\boxed{3}\n\nInstruction:\n" in prompt
    assert "enclosed within \\boxed{}." in prompt and "<CONCLUSION>" not in prompt
    assert "<SUMMARY> </SUMMARY>, <CAPTION> </CAPTION>" in rewrite_prompt("q", "2", "r", STAGES)
    with pytest.raises(ConfigError, match="rewrite is false"):
        OctopusSFTDataConfig(model="m", data="d", output="o", rewriter="bigger").check()
