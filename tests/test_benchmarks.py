"""Benchmark adapters on fixture rows in each VLMEvalKit TSV format, scoring, and the evaluation stage."""

import base64
import csv
import dataclasses
import io
import json
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from sherlock.answers import answer_part, normalise_number, normalise_text, numbers_in
from sherlock.benchmarks import (
    BENCHMARKS,
    MCQ_INSTRUCTION,
    load_benchmark,
    load_grader,
    mme_score,
    mmvet_keyword_grade,
    paper_average,
    score_responses,
)
from sherlock.config import ConfigError
from sherlock.data.llava_cot import DataQualityError, load_data
from sherlock.protocol import SHERLOCK, Protocol
from sherlock.stages.evaluate import (
    EvaluateConfig,
    EvaluationError,
    RescoreConfig,
    run_evaluate,
    run_rescore,
    wait_answers,
)


def _image(colour) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (72, 72), colour).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _tsv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    return path


RED, BLUE = _image("red"), _image("blue")
MCQ = [{"index": 0, "question": "What colour is the image?", "hint": "A flat image.", "A": "red", "B": "blue",
        "C": "green", "D": "nan", "answer": "A", "category": "colour", "image": RED},
       {"index": 1, "question": "What colour is the image?", "hint": "nan", "A": "red", "B": "blue", "C": "nan",
        "D": "nan", "answer": "B", "category": "colour", "image": BLUE}]
FIXTURE_DIR = Path(__file__).resolve().parent / "fixtures"
FIXTURES = {
    "mmbench": MCQ,
    "mmstar": [{k: v for k, v in row.items() if k != "hint"} | {"l2_category": "x"} for row in MCQ],
    "ai2d": [{k: v for k, v in row.items() if k not in ("hint", "category")} for row in MCQ],
    "hallusionbench": [{"index": 0, "question": "Is the image red?", "answer": "Yes", "category": "VS",
                        "l2-category": "chart", "set_id": 0, "figure_id": 0, "question_id": 0, "image": RED},
                       {"index": 1, "question": "Is the image red?", "answer": "No", "category": "VS",
                        "l2-category": "chart", "set_id": 0, "figure_id": 1, "question_id": 0, "image": BLUE}],
    "mmmu": [MCQ[0] | {"question_type": "multiple-choice"},
             {"index": 5, "question": "How many images?", "hint": "nan", "A": "nan", "B": "nan", "C": "nan",
              "D": "nan", "answer": "1", "category": "Math", "question_type": "open", "image": f"['{RED}']"}],
    "mathvista": [{"index": 0, "question": "Which colour?", "answer": "blue", "question_type": "multi_choice",
                   "answer_type": "text", "choices": "['red', 'blue']", "precision": "nan", "category": "x",
                   "image": BLUE},
                  {"index": 1, "question": "What is 1/3?", "answer": "0.33", "question_type": "free_form",
                   "answer_type": "float", "choices": "nan", "precision": "2", "category": "x", "image": RED}],
    "mme": [{"index": i, "question": q + " Please answer yes or no.", "answer": a, "category": c,
             "image_path": f"{c}/{img}.png", "image": RED}
            for i, (c, img, q, a) in enumerate([
                ("existence", 0, "Is there red?", "Yes"), ("existence", 0, "Is there blue?", "No"),
                ("existence", 1, "Is there red?", "Yes"), ("existence", 1, "Is there green?", "No"),
                ("code_reasoning", 2, "Does it print 1?", "Yes"), ("code_reasoning", 2, "Does it print 2?", "No")])],
    "mmvet": [{"index": "v1", "question": "What year was this built?", "answer": "2004<OR>2005",
               "category": "ocr,know", "image": RED},
              {"index": "v2", "question": "Which colours are shown?", "answer": "red<AND>blue", "category": "rec",
               "image": BLUE},
              {"index": "v3", "question": "Describe the image.", "answer": "A red square.", "category": "rec,gen",
               "image": RED}],
}


@pytest.fixture(scope="module")
def tsv_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlmevalkit")
    for name, rows in FIXTURES.items():
        _tsv(root / f"{name}.tsv", rows)
    return root


def _conclude(answer):
    return f"<SUMMARY>s</SUMMARY><CAPTION>c</CAPTION><REASONING>r</REASONING><CONCLUSION>{answer}</CONCLUSION>"


def test_multiple_choice_prompt_and_gold_letter(tsv_dir):
    first, second = load_benchmark("mmbench", tsv_dir / "mmbench.tsv")
    assert first.prompt == ("Hint: A flat image.\nQuestion: What colour is the image?\nOptions:\nA. red\nB. blue\n"
                            f"C. green\n{MCQ_INSTRUCTION}")
    assert "Hint" not in second.prompt and "C." not in second.prompt
    assert (first.answer, first.answer_type, first.image.getpixel((0, 0))) == ("A", "choice", (255, 0, 0))
    for name in ("mmstar", "ai2d"):
        assert [i.answer for i in load_benchmark(name, tsv_dir / f"{name}.tsv")] == ["A", "B"]


@pytest.mark.parametrize(
    "name, responses, expected",
    [
        ("mmbench", ["A", "A"], 50.0),
        ("mmstar", ["A", "B"], 100.0),
        ("ai2d", ["The answer is B", "B"], 50.0),
        ("hallusionbench", ["Yes, it is red.", "Yes"], 50.0),
        ("mmmu", ["A", "1"], 100.0),
        ("mathvista", ["B", "0.333"], 100.0),
        ("mathvista", ["blue", "0.34"], 50.0),  # an option's text is its letter; 0.34 ≠ 0.333 at 3 digits
        ("mathvista", ["A blue one", "0.3"], 50.0),  # "A" before a word is an article: option B by its text
    ],
)
def test_rule_based_scores(tsv_dir, name, responses, expected):
    items = load_benchmark(name, tsv_dir / f"{name}.tsv")
    result = score_responses(name, items, [_conclude(r) for r in responses])
    assert result["score"] == pytest.approx(expected)
    assert result["n"] == len(items)


def test_mme_counts_acc_and_acc_plus_per_subtask(tsv_dir):
    items = load_benchmark("mme", tsv_dir / "mme.tsv")
    # existence: image 0 both right, image 1 one wrong -> acc 75 + acc+ 50; code: both right -> 100 + 100
    result = score_responses("mme", items, [_conclude(a) for a in ("Yes", "No", "Yes", "Yes", "Yes", "No")])
    assert result["per_category"] == {"existence": pytest.approx(125.0), "code_reasoning": pytest.approx(200.0)}
    assert (result["perception"], result["cognition"], result["score"]) == pytest.approx((125.0, 200.0, 325.0))
    assert mme_score(items, [False] * 6)["score"] == 0


def test_mmvet_is_graded_by_its_and_or_answers_or_by_a_registered_model_judge(tsv_dir, register_entry_point):
    items = load_benchmark("mmvet", tsv_dir / "mmvet.tsv")
    assert [(i.prompt, i.answer_type) for i in items][0] == ("What year was this built?", "open")
    responses = [_conclude("It was finished in 2005."), _conclude("Red and green."), _conclude("a red square")]
    result = score_responses("mmvet", items, responses)
    assert result["score"] == pytest.approx(100 * (1 + 0.5 + 1) / 3) and result["n"] == 3
    assert result["per_category"] == pytest.approx({"gen": 100.0, "know": 100.0, "ocr": 100.0, "rec": 75.0})
    assert score_responses("mmvet", items, [_conclude("1999"), _conclude("blue"), _conclude("a cat")])["score"] == \
        pytest.approx(100 * 0.5 / 3)

    register_entry_point("sherlock.graders", "lenient", "question, gold, response", "return 0.8")
    assert score_responses("mmvet", items, responses, load_grader("lenient"))["score"] == pytest.approx(80.0)
    register_entry_point("sherlock.graders", "broken", "question, gold, response", "return 7")
    with pytest.raises(ValueError, match="grades are in"):
        score_responses("mmvet", items, responses, load_grader("broken"))
    for name in ("plugin_lenient:function", "os:system"):
        with pytest.raises(ConfigError, match=r"unknown grader .*'sherlock.graders'"):
            load_grader(name)
    with pytest.raises(ConfigError, match="unknown grader"):
        EvaluateConfig(model="m", output="o", benchmarks="mmvet=x", grader="os:system").check()


@pytest.mark.parametrize("gold, conclusion, grade", [
    ("-3.5", "It is −3.5 degrees.", 1.0),  # Unicode minus
    ("3.5", "It is −3.5 degrees.", 0.0),  # not the same number
    ("1000", "It costs 1 000 dollars.", 1.0), ("1,000", "It costs 1000 dollars.", 1.0),
    ("2", "There are two.", 1.0), ("2", "There are 12.", 0.0), ("12.0", "12", 1.0),
    ("4<AND>blue", "Four blue cars.", 1.0), ("4<AND>blue", "4 red cars.", 0.5),
])
def test_mmvet_keyword_grade_reads_numbers_as_the_answer_extractor_does(gold, conclusion, grade):
    """The keyword grader finds numbers with :func:`sherlock.answers.numbers_in` (dashes, digit groups,
    number words), the same reading as evaluation and the online self-consistency filter."""
    assert mmvet_keyword_grade("q", gold, _conclude(conclusion)) == grade


def grader_agreement(grader) -> dict[str, tuple[int, int]]:
    """``{kind: (cases graded within 0.05 of the reference, cases)}`` on tests/fixtures/mmvet_graded.jsonl: 44
    MM-Vet-style questions, gold answers and CONCLUSIONs, each with the grade MM-Vet's GPT-4 rubric gives
    (graded by hand for this set; not MM-Vet's own data or its grader's output)."""
    agreement = {}
    for line in (FIXTURE_DIR / "mmvet_graded.jsonl").read_text().splitlines():
        case = json.loads(line)
        grade = grader(case["question"], case["gold"], _conclude(case["conclusion"]))
        hits, total = agreement.get(case["kind"], (0, 0))
        agreement[case["kind"]] = (hits + (abs(grade - case["grade"]) <= 0.05), total + 1)
    return agreement


def test_the_keyword_grader_on_a_graded_set_denials_and_hedges_get_nothing():
    """MM-Vet's keyword grading gave 1.0 to "It is not red; it is blue." (gold red), "1, 2, 3, 4 or 5" (gold 4)
    and "yes or no, I am not sure". Here it agrees with the reference on every exact, wrong, multi-part,
    negated and hedged case, never grades above it, and misses every paraphrase (what a GPT-4 grader adds).
    Printed per kind with ``-s``; the plain element match (negations and hedges credited) beside it."""
    def element_match(question, gold, response):  # the grader before negations and hedges were read
        words, numbers = f" {normalise_text(answer_part(response))} ", set(numbers_in(answer_part(response)))
        return max(sum(normalise_number(e) in numbers if normalise_number(e) is not None
                       else f" {normalise_text(e)} " in words for e in alternative.split("<AND>"))
                   / len(alternative.split("<AND>")) for alternative in gold.split("<OR>"))

    ours, before = grader_agreement(mmvet_keyword_grade), grader_agreement(element_match)
    for kind, (hits, total) in ours.items():
        print(f"{kind:10s} keyword grader {hits}/{total}   element match {before[kind][0]}/{total}")
    assert {kind: hits for kind, (hits, total) in ours.items() if hits < total} == {"paraphrase": 0}
    assert before["negation"][0] < ours["negation"][1] and before["hedge"][0] == 0  # what the fix changes
    for line in (FIXTURE_DIR / "mmvet_graded.jsonl").read_text().splitlines():
        case = json.loads(line)
        assert mmvet_keyword_grade("q", case["gold"], _conclude(case["conclusion"])) <= case["grade"] + 0.01, case


def test_paper_average_divides_mme_by_28():
    scores = {"mmbench": 70, "mmstar": 50, "ai2d": 80, "hallusionbench": 40, "mmmu": 45, "mathvista": 50,
              "mme": 2100, "mmvet": 60}
    assert paper_average(scores) == (pytest.approx((70 + 50 + 80 + 40 + 45 + 50 + 75 + 60) / 8), [])
    assert paper_average(scores | {"mmvet": None}) == (pytest.approx((70 + 50 + 80 + 40 + 45 + 50 + 75) / 7), ["mmvet"])
    assert paper_average({"llava_cot": 50.0}) == (None, list(scores))


def test_bad_benchmark_files(tmp_path):
    with pytest.raises(ValueError, match="missing column"):
        load_benchmark("mmbench", _tsv(tmp_path / "bad.tsv", [{"index": 0, "question": "q"}]))
    with pytest.raises(ValueError, match="unknown benchmark"):
        load_benchmark("seedbench", tmp_path / "bad.tsv")
    with pytest.raises(FileNotFoundError):
        load_benchmark("mme", tmp_path / "none.tsv")


def test_evaluation_stage_scores_every_round(tiny_model_dir, subset_dir, tsv_dir, tmp_path):
    config = EvaluateConfig(model=str(tiny_model_dir), output=str(tmp_path / "eval"), correction_rounds=2,
                              benchmarks=f"llava_cot={subset_dir},mmbench={tsv_dir / 'mmbench.tsv'}",
                              limit=6, max_new_tokens=12, prior_data=str(subset_dir))
    assert (config.temperature, config.top_p) == (0.6, 0.7)  # the paper's protocol by default
    metrics = run_evaluate(config)
    synthetic = metrics["benchmarks"]["llava_cot"]["rounds"]
    assert len(synthetic) == 3 and all(r["n"] == 6 for r in synthetic)
    for name, result in metrics["benchmarks"].items():
        assert {"greedy_direct", "blank_image", "blind_prior", "sc_minus_direct"} <= set(result), name
        paired = result["sc_minus_direct"]
        assert paired["difference"] == pytest.approx(result["rounds"][2]["score"] - result["rounds"][0]["score"])
        assert paired["ci_low"] <= paired["difference"] <= paired["ci_high"]
    assert "perception" in metrics["benchmarks"]["llava_cot"] and "perception" not in metrics["benchmarks"]["mmbench"]
    predictions = [json.loads(line) for line in (tmp_path / "eval/predictions.jsonl").read_text().splitlines()]
    for name, result in metrics["benchmarks"].items():  # the headroom, consistent with the per-item scores
        correct = [p["correct"] for p in predictions if p["benchmark"] == name]
        assert result["oracle_gated"][0] == pytest.approx(100 * sum(c[0] for c in correct) / len(correct))
        assert result["oracle_gated"][-1] == pytest.approx(100 * sum(max(c) for c in correct) / len(correct))
        assert [sum(f.values()) for f in result["flips"]] == [len(correct)] * 2
        samples = result["samples"]
        assert samples["k"] == 3 and samples["pass_at_1"] <= samples["pass_at_k"]
        assert samples["majority_at_k"] <= samples["pass_at_k"]
    wrong = round(6 * (1 - synthetic[0]["score"] / 100))
    assert sum(metrics["benchmarks"]["llava_cot"]["departure"].values()) == wrong
    assert {"easy", "medium", "hard"} >= set(synthetic[0]["per_category"])
    assert len(predictions) == 8 and all(len(p["responses"]) == 3 for p in predictions)
    table = (tmp_path / "eval/results.md").read_text()
    assert "| llava_cot | 6 |" in table and "+SC round 2" in table and "| blank image | blind prior |" in table
    assert "| oracle-gated SC | verifier-gated SC | pass@1 | maj@k | pass@k | Wait |" in table
    for result in metrics["benchmarks"].values():  # the verifier-gated round starts where the others do
        assert result["verifier_gated"][0] == result["oracle_gated"][0] and len(result["verifier_gated"]) == 3
        assert result["wait"]["n"] == result["rounds"][0]["n"] and result["verifier"]["name"] == "consistency"
        assert sum(s["n"] for s in result["slices"]["format"].values()) == result["rounds"][0]["n"]
    assert (tmp_path / "eval/accuracy_by_round.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ConfigError, match="unknown benchmark"):
        EvaluateConfig(model="m", output="o", benchmarks="vqav2=x").check()


def test_octopus_evaluation_scores_each_attempt_as_a_round(tiny_model_dir, subset_dir, tmp_path):
    """``correction: continue``: round 0 is o1 of the trigger prompt, round k the attempt after k separators;
    the baselines are asked the same prompt; without the setting a checkpoint is asked as its
    ``self_correction.json`` declares (Sherlock's way without one); a protocol or format nobody knows is refused."""
    from sherlock.protocol import Protocol, write_protocol
    from sherlock.reasoning import SC_OPEN

    config = EvaluateConfig(model=str(tiny_model_dir), output=str(tmp_path / "eval"), correction_rounds=2,
                            correction="continue", benchmarks=f"llava_cot={subset_dir}", limit=4, max_new_tokens=12)
    result = run_evaluate(config)["benchmarks"]["llava_cot"]
    assert len(result["rounds"]) == 3 and [sum(f.values()) for f in result["flips"]] == [4, 4]
    predictions = [json.loads(line) for line in (tmp_path / "eval/predictions.jsonl").read_text().splitlines()]
    assert all(len(p["responses"]) == 3 and not any(SC_OPEN in r for r in p["responses"]) for p in predictions)
    prompted = run_evaluate(dataclasses.replace(config, correction="prompt", output=str(tmp_path / "prompt")))
    assert prompted["benchmarks"]["llava_cot"]["rounds"][0]["n"] == 4
    sherlock_rounds = [json.loads(line)["responses"] for line in (tmp_path / "prompt/predictions.jsonl").open()]
    assert [p["responses"][0] for p in predictions] != [r[0] for r in sherlock_rounds]  # the trigger prompt
    assert prompted["self_correction"] == {"correction": "prompt", "response_format": "stages"}
    undeclared = run_evaluate(dataclasses.replace(config, correction=None, output=str(tmp_path / "undeclared")))
    assert undeclared["self_correction"]["correction"] == "prompt"  # the tiny checkpoint declares nothing
    declared = shutil.copytree(tiny_model_dir, tmp_path / "declared")
    write_protocol(declared, Protocol("continue"))
    as_trained = run_evaluate(dataclasses.replace(config, model=str(declared), correction=None,
                                                  output=str(tmp_path / "as-trained")))
    assert as_trained["self_correction"] == {"correction": "continue", "response_format": "stages"}
    assert [json.loads(line)["responses"] for line in (tmp_path / "as-trained/predictions.jsonl").open()] == [
        p["responses"] for p in predictions]
    assert "rounds asked as correction 'continue'" in (tmp_path / "as-trained/results.md").read_text()
    for bad in ({"correction": "append"}, {"response_format": "json"}):
        with pytest.raises(ConfigError, match="correction must be one of"):
            dataclasses.replace(config, **bad).check()


def test_describe_and_respond_prefixes_the_models_own_description(tiny_model_dir, subset_dir, tmp_path):
    """STIC's DaR: the greedy description of STIC_DAR_PROMPT goes in front of every question."""
    from sherlock.decoding import DecodingConfig
    from sherlock.generation import generate
    from sherlock.models.loading import load_vlm
    from sherlock.prompts import STIC_DAR_PROMPT

    config = EvaluateConfig(model=str(tiny_model_dir), output=str(tmp_path / "dar"), correction_rounds=1,
                              benchmarks=f"llava_cot={subset_dir}", limit=3, max_new_tokens=6, describe_first=True)
    run_evaluate(config)
    predictions = [json.loads(line) for line in (tmp_path / "dar/predictions.jsonl").read_text().splitlines()]
    items = load_benchmark("llava_cot", subset_dir, 3)
    model, processor = load_vlm(tiny_model_dir)
    descriptions = generate(model, processor, [STIC_DAR_PROMPT] * 3, [i.image for i in items],
                            config=DecodingConfig(max_new_tokens=6))
    for prediction, item, description in zip(predictions, items, descriptions):
        assert prediction["prompt"] == f"Image description:\n{description}\n\n{item.prompt}"
        assert len(prediction["responses"]) == 2


def _rows(rows):
    """Rows with the columns every row of a TSV shares (the union, blank where a row lacks one)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    return [{key: row.get(key, "") for key in columns} for row in rows]


def test_an_image_cell_naming_another_row_repeats_its_image_and_groups_mme_pairs(tmp_path):
    """VLMEvalKit stores a repeated image as the index of the row that holds it (cells of <= 64 characters)."""
    rows = [{"index": 10, "question": "Is there red?", "answer": "Yes", "category": "existence", "image": RED},
            {"index": 11, "question": "Is there blue?", "answer": "No", "category": "existence", "image": "10"},
            {"index": 12, "question": "Is there red?", "answer": "No", "category": "existence", "image": BLUE},
            {"index": 13, "question": "Is there blue?", "answer": "Yes", "category": "existence", "image": "12"}]
    items = load_benchmark("mme", _tsv(tmp_path / "MME.tsv", rows))
    assert [i.image.getpixel((0, 0)) for i in items] == [(255, 0, 0), (255, 0, 0), (0, 0, 255), (0, 0, 255)]
    assert items[0].groups["image"] == items[1].groups["image"] != items[2].groups["image"]
    # image 10 both right (acc+), image 12 one wrong: acc 75 + acc+ 50
    result = score_responses("mme", items, [_conclude(a) for a in ("Yes", "No", "No", "No")])
    assert result["score"] == pytest.approx(125.0)


def test_bad_rows_are_quarantined_with_line_and_reason_and_too_many_refuse_the_file(tmp_path):
    truncated = base64.b64encode(base64.b64decode(RED)[:40]).decode()
    rows = [MCQ[0] | {"index": i} for i in range(200)]
    rows[3] |= {"image": "999"}  # names no row
    rows[7] |= {"image": "not base64 at all, and longer than sixty-four characters so not a reference!"}
    rows[9] |= {"image": truncated}
    rows[12] |= {"answer": "nan"}
    rows[14] |= {"image": ""}
    rows[16] |= {"image": "3"}  # names a row that holds a reference itself
    bomb = io.BytesIO()
    Image.new("1", (12000, 12000)).save(bomb, format="PNG")  # a few KB, 144 Mpx: under PIL's bomb check
    rows[18] |= {"image": base64.b64encode(bomb.getvalue()).decode()}
    path = _tsv(tmp_path / "MMStar.tsv", rows)
    lines = path.read_bytes().split(b"\r\n")  # csv's line terminator
    lines[21] += b"\tan extra cell"  # row 20: ragged, one cell past the header
    lines[23] = lines[23].rsplit(b"\t", 1)[0]  # row 22: one cell short
    lines[25] = lines[25].replace(b"What", b"Wh\xffat", 1)  # row 24: a byte that is not UTF-8
    path.write_bytes(b"\r\n".join(lines))
    items = load_benchmark("mmstar", path, quarantine=tmp_path / "q.jsonl", max_bad_fraction=0.06)
    faulty = {"3", "7", "9", "12", "14", "16", "18", "20", "22", "24"}
    assert len(items) == 190 and {i.id for i in items}.isdisjoint(faulty)
    bad = [json.loads(line) for line in (tmp_path / "q.jsonl").read_text().splitlines()]
    assert [(b["line"], b["index"]) for b in bad] == [(int(i) + 2, i) for i in sorted(faulty, key=int)]
    assert [b["reason"].split(" (")[0] for b in bad] == [
        "image cell '999' refers to row index '999', which does not exist", "image 1 is not base64",
        "image 1 does not decode", "no gold answer", "the image cell is empty",
        "image cell '3' refers to row index '3', which holds a reference itself, not an image",
        "image 1 is 12000x12000, over the 16777216-pixel limit", f"{len(rows[0]) + 1} cells; the header has "
        f"{len(rows[0])}", f"{len(rows[0]) - 1} cells; the header has {len(rows[0])}",
        "bytes that are not UTF-8 in column(s) ['question']"]
    with pytest.raises(DataQualityError, match=r"10 of 200 rows of .*MMStar.tsv.*line 5, index 3"):
        load_benchmark("mmstar", path, quarantine=tmp_path / "q2.jsonl")  # the default limit: 1 %


def test_a_test_split_without_answers_is_refused_naming_the_split_that_has_them(tmp_path):
    rows = [{k: v for k, v in row.items() if k != "answer"} for row in MCQ]
    with pytest.raises(ValueError, match=r"MMBench_TEST_EN_V11.tsv has no 'answer' column.*MMBench_DEV_EN_V11"):
        load_benchmark("mmbench", _tsv(tmp_path / "MMBench_TEST_EN_V11.tsv", rows))


def test_mmbench_counts_a_question_only_when_every_rotation_is_right(tmp_path):
    rotations = [{"index": 0 + k * 1_000_000, "question": "What colour?", "A": o[0], "B": o[1], "C": o[2],
                  "answer": "ABC"[o.index("red")], "category": "colour", "image": RED}
                 for k, o in enumerate([("red", "blue", "green"), ("blue", "green", "red"), ("green", "red", "blue")])]
    other = {"index": 1, "question": "What colour?", "A": "red", "B": "blue", "C": "green", "answer": "B",
             "category": "colour", "image": "0"}
    items = load_benchmark("mmbench", _tsv(tmp_path / "MMBench_DEV_EN_V11.tsv", rotations + [other]))
    assert [i.answer for i in items] == ["A", "C", "B", "B"] and [i.groups["circular"] for i in items] == list("0001")
    one_rotation_wrong = score_responses("mmbench", items, [_conclude(a) for a in ("A", "C", "A", "B")])
    assert (one_rotation_wrong["score"], one_rotation_wrong["vanilla"], one_rotation_wrong["n"]) == (50.0, 75.0, 2)
    assert score_responses("mmbench", items, [_conclude(a) for a in ("A", "C", "B", "B")])["score"] == 100.0


def test_hallusionbench_reports_aacc_facc_and_qacc_as_vlmevalkit_groups_them(tmp_path):
    """Set, figure and question ids are the 4th-6th parts of the index; fAcc needs every question on a figure
    right, qAcc every figure of a question."""
    rows = [{"index": f"VS_chart_0_{s}_{f}_{q}", "question": "Is it red?", "answer": a, "category": "VS",
             "l2-category": "chart", "image": RED if f == 0 else BLUE}
            for s, f, q, a in [(0, 0, 0, "Yes"), (0, 0, 1, "No"), (0, 1, 0, "No"), (0, 1, 1, "Yes")]]
    items = load_benchmark("hallusionbench", _tsv(tmp_path / "HallusionBench.tsv", rows))
    result = score_responses("hallusionbench", items, [_conclude(a) for a in ("Yes", "No", "Yes", "Yes")])
    # right: (f0,q0) (f0,q1) (f1,q1); figures: f0 all right, f1 not -> 50; questions: q0 not, q1 all right -> 50
    assert (result["aAcc"], result["fAcc"], result["qAcc"], result["score"]) == (75.0, 50.0, 50.0, 75.0)


def test_mmmu_reads_an_options_list_keeps_every_image_and_scores_the_validation_split(tmp_path):
    rows = [{"index": 1, "question": "Which?", "options": "['red', 'blue']", "answer": "A", "split": "dev",
             "category": "Art", "image": f"['{RED}', '{BLUE}']"},
            {"index": 2, "question": "Which?", "options": "['red', 'blue']", "answer": "B", "split": "validation",
             "category": "Art", "image": BLUE},
            {"index": 3, "question": "Which?", "options": "['red', 'blue']", "answer": "A", "split": "validation",
             "category": "Art", "image": RED}]
    items = load_benchmark("mmmu", _tsv(tmp_path / "MMMU_DEV_VAL.tsv", rows))
    assert items[0].prompt.endswith(f"Options:\nA. red\nB. blue\n{MCQ_INSTRUCTION}")
    assert items[0].answer_type == "choice"
    assert [image.getpixel((0, 0)) for image in items[0].images] == [(255, 0, 0), (0, 0, 255)]
    assert len(items[1].images) == 1
    result = score_responses("mmmu", items, [_conclude(a) for a in ("A", "B", "B")])
    assert result["per_split"] == {"dev": 100.0, "validation": 50.0} and (result["score"], result["n"]) == (50.0, 2)


def test_mathvista_uses_its_question_verbatim_and_finds_the_gold_choice(tmp_path):
    question = "Hint: Please answer.\nQuestion: Which colour?\nChoices:\n(A) Red\n(B) Blue"
    rows = [{"index": 1, "question": question, "answer": "blue", "question_type": "multi_choice",
             "answer_type": "text", "choices": "['Red', 'Blue']", "image": BLUE},
            {"index": 2, "question": question, "answer": "Red", "answer_option": "A", "question_type": "multi_choice",
             "answer_type": "text", "choices": "['Red', 'Blue']", "image": RED},
            {"index": 3, "question": question, "answer": "green", "question_type": "multi_choice",
             "answer_type": "text", "choices": "['Red', 'Blue']", "image": RED}]
    items = load_benchmark("mathvista", _tsv(tmp_path / "MathVista_MINI.tsv", _rows(rows)),
                           quarantine=tmp_path / "q.jsonl", max_bad_fraction=0.5)
    assert [(i.prompt, i.answer) for i in items] == [(question, "B"), (question, "A")]
    assert "none of the choices" in json.loads((tmp_path / "q.jsonl").read_text())["reason"]


def test_a_failing_benchmark_keeps_the_finished_ones(tiny_model_dir, subset_dir, tsv_dir, tmp_path):
    config = EvaluateConfig(model=str(tiny_model_dir), output=str(tmp_path / "eval"), correction_rounds=1,
                              benchmarks=f"mmstar={tsv_dir / 'mmstar.tsv'},mme={tmp_path / 'missing.tsv'}",
                              max_new_tokens=4, greedy_direct=False, blank_image=False)
    with pytest.raises(EvaluationError, match=r"1 benchmark\(s\) failed.*mme.*FileNotFoundError"):
        run_evaluate(config)
    metrics = json.loads((tmp_path / "eval/metrics.json").read_text())
    assert set(metrics["benchmarks"]) == {"mmstar"} and "FileNotFoundError" in metrics["errors"]["mme"]
    assert metrics["paper_average_missing"] == [name for name in BENCHMARKS if name != "mmstar"]
    table = (tmp_path / "eval/results.md").read_text()
    assert "| mmstar | 2 |" in table and "missing: mmbench, ai2d" in table and "| mme | failed: " in table


def test_mlflow_gets_each_benchmarks_own_aggregates_and_the_paper_average_only_over_all_eight():
    from sherlock.tracking import evaluation_metrics

    metrics = {"benchmarks": {
        "hallusionbench": {"rounds": [{"score": 75.0, "aAcc": 75.0, "fAcc": 50.0, "qAcc": 25.0}]},
        "mmmu": {"rounds": [{"score": 50.0, "per_split": {"dev": 100.0, "validation": 50.0}}]}},
        "paper_average": [40.0], "paper_average_missing": ["mmbench"]}
    flat = evaluation_metrics(metrics)
    assert (flat["hallusionbench/fAcc"], flat["hallusionbench/qAcc"], flat["mmmu/dev"]) == (50.0, 25.0, 100.0)
    assert "paper_average/round_0" not in flat
    assert evaluation_metrics(metrics | {"paper_average_missing": []})["paper_average/round_0"] == 40.0


def test_rescore_scores_saved_predictions_again_without_a_model(tsv_dir, tmp_path, capsys):
    """Stale scores (as an older extractor left them) are replaced; what moved is counted per round; a
    malformed file, a prediction of no item or a benchmark without its file is refused."""
    from sherlock.cli import main

    rows = [{"benchmark": "mmbench", "id": "0", "answer": "A", "prompt": "p",
             "responses": [_conclude("A"), _conclude("C")], "correct": [False, False]},
            {"benchmark": "mmbench", "id": "1", "answer": "B", "prompt": "p",
             "responses": [_conclude("A"), _conclude("blue")], "correct": [True, False]}]
    saved = tmp_path / "predictions.jsonl"
    saved.write_text("".join(json.dumps(row) + "\n" for row in rows))
    main(["rescore", "--predictions", str(saved), "--benchmarks", f"mmbench={tsv_dir / 'mmbench.tsv'}",
          "--output", str(tmp_path / "again")])
    assert "mmbench round 0: 50.0 -> 50.0 (1 up, 1 down)" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "again/metrics.json").read_text())["benchmarks"]["mmbench"]
    assert metrics["moved"] == [{"up": 1, "down": 1}, {"up": 1, "down": 0}]
    assert [r["score"] for r in metrics["rounds"]] == [50.0, 50.0]
    again = [json.loads(line) for line in (tmp_path / "again/predictions.jsonl").read_text().splitlines()]
    assert [row["correct"] for row in again] == [[1.0, 0.0], [0.0, 1.0]]
    assert [row["correct_before"] for row in again] == [row["correct"] for row in rows]

    files, quarantine = f"mmbench={tsv_dir / 'mmbench.tsv'}", tmp_path / "bad/quarantine/predictions.jsonl"
    for bad, error, match in [
        (rows + [rows[0]], DataQualityError, "appears twice"),
        ([rows[0] | {"correct": [True]}], DataQualityError, "one score per response"),
        ([rows[0] | {"id": "7"}], ValueError, "'7' of mmbench is not an item"),
        ([rows[0] | {"benchmark": "mme"}], ConfigError, r"predictions of \['mme'\]")]:
        saved.write_text("".join(json.dumps(row) + "\n" for row in bad))
        with pytest.raises(error) as raised:
            run_rescore(RescoreConfig(predictions=str(saved), benchmarks=files, output=str(tmp_path / "bad")))
        reason = quarantine.read_text() if error is DataQualityError else str(raised.value)
        assert re.search(match, reason), reason


def test_rescore_reports_the_verifier_gated_round_and_the_slices_on_constructed_predictions(tmp_path):
    """The harness's arithmetic end to end, no model: on the embedded task, gold responses (which the
    consistency verifier accepts) and the same responses with another conclusion (which it rejects)."""
    from sherlock.data.synthetic import generate_synthetic

    data = generate_synthetic(tmp_path / "data", 6, seed=3)
    records = {r.id: r for r in load_data(data).records}

    def broken(record) -> str:
        wrong = {"number": "9", "choice": "D" if record.answer != "D" else "A"}.get(
            record.answer_type, "purple" if record.answer != "purple" else "red")
        return re.sub(r"<CONCLUSION>.*</CONCLUSION>", f"<CONCLUSION>{wrong}</CONCLUSION>", record.response)

    plan = ["gb", "gg", "gg", "bg", "bg", "bb"]  # per item: round 0, round 1 (gold or broken)
    rows = [{"benchmark": "llava_cot", "id": key, "answer": record.answer, "prompt": record.question,
             "responses": [record.response if step == "g" else broken(record) for step in steps],
             "correct": [False, False]} for (key, record), steps in zip(records.items(), plan, strict=True)]
    saved = tmp_path / "predictions.jsonl"
    saved.write_text("".join(json.dumps(row) + "\n" for row in rows))
    metrics = run_rescore(RescoreConfig(predictions=str(saved), benchmarks=f"llava_cot={data}",
                                        output=str(tmp_path / "again")))["benchmarks"]["llava_cot"]
    assert [r["score"] for r in metrics["rounds"]] == pytest.approx([50.0, 400 / 6])
    assert metrics["flips"] == [{"fixed": 2, "broken": 1, "kept_right": 2, "kept_wrong": 1}]
    # item 0's right direct answer is accepted, so its broken round 1 never counts
    assert metrics["verifier_gated"] == pytest.approx([50.0, 500 / 6]) == metrics["oracle_gated"]
    assert metrics["verifier"] == {"name": "consistency", "rejects_right": 0.0, "rejects_wrong": 100.0}
    tiers = [records[row["id"]].tier for row in rows]
    assert {tier: s["n"] for tier, s in metrics["slices"]["family"].items()} == {t: tiers.count(t) for t in tiers}
    assert sum(s["flips"]["fixed"] for s in metrics["slices"]["format"].values()) == 2
    table = (tmp_path / "again" / "results.md").read_text()
    assert "verifier-gated SC" in table.splitlines()[0] and "| 83.3 |" in table
    none = run_rescore(RescoreConfig(predictions=str(saved), benchmarks=f"llava_cot={data}", verifier=None,
                                     output=str(tmp_path / "no-verifier")))["benchmarks"]["llava_cot"]
    assert "verifier_gated" not in none and none["oracle_gated"] == metrics["oracle_gated"]


def test_the_wait_baseline_keeps_a_continuation_only_where_it_answers_in_the_checkpoints_format():
    """A continuation after "Wait," replaces the direct answer only where it gives a final answer the way the
    checkpoint writes one: a CONCLUSION for Sherlock's stages, a \\boxed{} for Octopus's think-boxed."""
    direct = ["<CONCLUSION>3</CONCLUSION>", "\\boxed{3}"]
    continued = [" the count is 4.\n<CONCLUSION>4</CONCLUSION>", " recounting, \\boxed{4}"]
    assert wait_answers(SHERLOCK, direct, continued) == [continued[0], direct[1]]
    assert wait_answers(Protocol("continue", "think-boxed"), direct, continued) == [direct[0], continued[1]]
    with pytest.raises(ValueError):
        wait_answers(SHERLOCK, direct, continued[:1])
