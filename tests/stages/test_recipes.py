"""SCL and STIC data construction: answer extraction, pair typing, description pairs, described SFT data."""

import json
import random
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sherlock.config import ConfigError
from sherlock.data.llava_cot import load_llava_cot
from sherlock.data.preferences import read_pairs
from sherlock.data.schema import Record
from sherlock.data.synthetic import SOURCE
from sherlock.decoding import DecodingConfig
from sherlock.generation import generate
from sherlock.models.loading import load_vlm
from sherlock.perturb import stic_corruption
from sherlock.prompts import (
    SCL_REVIEW_PROMPTS,
    STIC_DESCRIPTION_PROMPT,
    STIC_HALLUCINATION_PROMPTS,
    STIC_SIMPLE_PROMPTS,
    scl_review_turn,
)
from sherlock.stages.scl_pairs import (
    SCLPairsConfig,
    review_conversations,
    run_scl_pairs,
    scl_answer,
    scl_correct,
    scl_pair,
    scl_type,
)
from sherlock.stages.stic_describe import STICDescribeConfig, run_stic_describe
from sherlock.stages.stic_pairs import HALLUCINATION, STICPairsConfig, draw_dispreferred, run_stic_pairs


def record(answer: str, answer_type: str) -> Record:
    return Record("r1", "images/r1.png", "How many?\nOptions:\nA. 1\nB. 2", "<CONCLUSION>x</CONCLUSION>", answer,
                  answer_type)


# --- SCL -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("response, answer_type, expected", [
    ("The shapes are red. ## B ## done", "choice", "B"),
    ("first ## C## then ## D ##", "choice", "C"),                  # the first marker wins
    ("##  blue circle ##", "text", "blue circle"),                 # pattern 2: anything between ##
    ("## 3 ##", "number", "3"),
    ("<CONCLUSION>A</CONCLUSION> ## B ##", "choice", "B"),          # the SCL marker before the CONCLUSION
    ("<SUMMARY>s</SUMMARY><CONCLUSION>4</CONCLUSION>", "number", "4"),
    ("I pick D. because", "choice", "D"),                          # the authors' letter fallback
    ("I pick D. because", "number", None),                         # … only for option letters
    ("no answer here", "text", None),
])
def test_scl_answer_extraction_order(response, answer_type, expected):
    assert scl_answer(response, answer_type) == expected


def test_scl_correctness_against_the_gold_answer():
    assert scl_correct("... ## B ##", record("B", "choice"))
    assert not scl_correct("... ## A ##", record("B", "choice"))
    assert scl_correct("<CONCLUSION>2</CONCLUSION>", record("2", "number"))
    assert not scl_correct("<CONCLUSION>3</CONCLUSION>", record("2", "number"))
    assert not scl_correct("nothing to extract", record("2", "number"))
    assert scl_correct("<CONCLUSION>Yes</CONCLUSION>", record("yes", "text"))


def test_scl_types_keep_only_mixed_outcomes_in_the_right_direction():
    """(−,+): refined chosen; (+,−): initial chosen; (+,+) and (−,−) dropped (spec §2)."""
    item = record("B", "choice")
    assert [scl_type(*o) for o in ((True, True), (False, True), (True, False), (False, False))] == [1, 2, 3, 4]
    improved = scl_pair(item, "wrong ## A ##", "right ## B ##", 2)
    assert (improved.chosen, improved.rejected) == ("right ## B ##", "wrong ## A ##")
    worsened = scl_pair(item, "right ## B ##", "wrong ## A ##", 3)
    assert (worsened.chosen, worsened.rejected) == ("right ## B ##", "wrong ## A ##")
    assert scl_pair(item, "a", "b", 1) is None and scl_pair(item, "a", "b", 4) is None
    for pair in (improved, worsened):
        # the prompt is the question alone; no shared prefix, no noise: β = dpo_beta · w(1, 0) = dpo_beta
        assert pair.question == item.question and pair.prefix_w == pair.prefix_l == ""
        assert (pair.truncation_step, pair.noise_level, pair.beta_weight) == (1, 0.0, 1.0)
    assert (improved.perturbation, worsened.perturbation) == ("scl_type_2", "scl_type_3")


def test_review_turn_continues_the_same_chat(tiny_model_dir):
    _, processor = load_vlm(tiny_model_dir)
    (conversation,) = review_conversations(["Q?"], ["first answer"], review_prompt=1, contexts=[()])
    text = processor.apply_chat_template(conversation, add_generation_prompt=True)
    assert text.count("<|image|>") == 1 and text.index("<|image|>") < text.index("Q?")
    assert text.index("Q?") < text.index("first answer") < text.index(SCL_REVIEW_PROMPTS[1])
    assert text.endswith(scl_review_turn(1) + "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")


def test_scl_pairs_need_gold_answers_and_a_valid_review_prompt(tiny_model_dir, subset_dir, tmp_path):
    with pytest.raises(ConfigError, match="review_prompt"):
        run_scl_pairs(SCLPairsConfig(model=str(tiny_model_dir), data=str(subset_dir), output=str(tmp_path),
                                     review_prompt=4))
    with pytest.raises(ConfigError, match="first_turn"):
        run_scl_pairs(SCLPairsConfig(model=str(tiny_model_dir), data=str(subset_dir), output=str(tmp_path),
                                     first_turn="plain"))
    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    rows = [json.loads(line) for line in (subset_dir / "data.jsonl").read_text().splitlines()]
    (unlabelled / "data.jsonl").write_text("".join(json.dumps({k: v for k, v in row.items() if k != "answer"}) + "\n"
                                                   for row in rows))
    shutil.copytree(subset_dir / SOURCE, unlabelled / SOURCE)  # a symbolic link out of the root is refused
    with pytest.raises(ValueError, match="have no gold answer"):
        run_scl_pairs(SCLPairsConfig(model=str(tiny_model_dir), data=str(unlabelled), output=str(tmp_path / "o")))


# --- STIC ------------------------------------------------------------------------------------------

def test_stic_dispreferred_draws_split_half_and_half():
    rng = random.Random(0)
    draws = [draw_dispreferred(rng) for _ in range(4000)]
    hallucinated = [d for d in draws if d.corruption_seed is None]
    corrupted = [d for d in draws if d.corruption_seed is not None]
    assert abs(len(hallucinated) / len(draws) - 0.5) < 0.03
    assert all(d.prompt in STIC_HALLUCINATION_PROMPTS for d in hallucinated)
    assert all(d.prompt == d.simple_prompt for d in corrupted)  # x itself, on the corrupted image
    assert {d.simple_prompt for d in draws} == set(STIC_SIMPLE_PROMPTS)
    image = Image.new("RGB", (72, 72), (200, 40, 40))
    kinds = Counter(stic_corruption(image, d.corruption_seed)[1] for d in corrupted[:1000])
    assert set(kinds) == {"downscale", "colour_jitter"} and abs(kinds["downscale"] / 1000 - 0.5) < 0.06
    assert [draw_dispreferred(random.Random(5)) for _ in range(3)] == [draw_dispreferred(random.Random(5))] * 3


def test_stic_pairs_prefer_the_clean_step_by_step_description(tiny_model_dir, subset_dir, tmp_path):
    """Greedy decoding, so every stored description can be regenerated from what the pair says."""
    config = STICPairsConfig(model=str(tiny_model_dir), data=str(subset_dir), output=str(tmp_path / "pairs"),
                             temperature=0.0, max_new_tokens=6, seed=3)
    pairs = read_pairs(Path(run_stic_pairs(config)).parent)
    records = {r.id: r for r in load_llava_cot(subset_dir / "data.jsonl").records}
    stats = json.loads((tmp_path / "pairs/stats.json").read_text())
    assert stats["num_pairs"] == len(pairs) and stats["num_pairs"] + stats["dropped_identical"] == len(records)
    rng = random.Random(3)
    draws = {r: draw_dispreferred(rng) for r in records}
    model, processor = load_vlm(tiny_model_dir)
    greedy = DecodingConfig(max_new_tokens=6)
    for pair in pairs:
        source = Image.open(subset_dir / records[pair.id].image).convert("RGB")
        stored = Image.open(tmp_path / "pairs" / pair.image).convert("RGB")
        assert np.array_equal(np.asarray(stored), np.asarray(source))  # training sees the clean image
        draw = draws[pair.id]
        assert pair.question == draw.simple_prompt and pair.prefix_w == pair.prefix_l == ""
        if draw.corruption_seed is None:
            assert pair.perturbation == HALLUCINATION
            rejected_image = source
        else:
            rejected_image, kind = stic_corruption(source, draw.corruption_seed)
            assert pair.perturbation == kind
        assert pair.chosen == generate(model, processor, [STIC_DESCRIPTION_PROMPT], [source], config=greedy)[0]
        assert pair.rejected == generate(model, processor, [draw.prompt], [rejected_image], config=greedy)[0]
    assert {p.perturbation for p in pairs} <= {HALLUCINATION, "downscale", "colour_jitter"}


def test_stic_described_data_infuses_the_description_and_keeps_the_answer(tiny_model_dir, subset_dir, tmp_path):
    config = STICDescribeConfig(model=str(tiny_model_dir), data=str(subset_dir), output=str(tmp_path / "described"),
                                num_items=5, max_new_tokens=6, seed=1)
    output = run_stic_describe(config)
    described = load_llava_cot(output / "data.jsonl").records
    source = {r.id: r for r in load_llava_cot(subset_dir / "data.jsonl").records}
    descriptions = {row["id"]: row for row in map(json.loads, (output / "descriptions.jsonl").read_text().splitlines())}
    assert len(described) == 5 == len(descriptions) and len({r.id for r in described}) == 5
    for item in described:
        original = source[item.id]
        assert item.question == f"Image description:\n{descriptions[item.id]['description']}\n\n{original.question}"
        assert (item.response, item.answer, item.image) == (original.response, original.answer, original.image)
        assert descriptions[item.id]["prompt"] in STIC_SIMPLE_PROMPTS
        assert (output / item.image).is_file()
    with pytest.raises(ConfigError, match="num_items must be in 1..16"):
        run_stic_describe(STICDescribeConfig(model=str(tiny_model_dir), data=str(subset_dir),
                                             output=str(tmp_path / "x"), num_items=17))
