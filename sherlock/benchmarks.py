"""Benchmark adapters: VLMEvalKit's TSV files and LLaVA-CoT-style jsonl data, with rule-based scoring.

VLMEvalKit distributes each benchmark as one TSV with a base64 ``image`` column (MMBench_TEST_EN_V11,
MMStar, AI2D_TEST_NO_MASK, HallusionBench, MMMU_DEV_VAL, MathVista_MINI, MME, MMVet). The scores
here are rule-based: option letters, yes/no, numbers with the benchmark's precision. Where the
official metric needs a judge model (MM-Vet's GPT grader, MathVista's GPT answer extraction) the
result says so: MM-Vet gets no score, MathVista's is marked as rule-extracted.
"""

from __future__ import annotations

import ast
import base64
import csv
import hashlib
import io
import math
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from sherlock.data.llava_cot import load_data
from sherlock.data.schema import open_image
from sherlock.reasoning import conclusion_text, extract_answer, is_correct, normalise_number

OPTION_LETTERS = "ABCDEFGHI"
MCQ_INSTRUCTION = "Please select the correct answer from the options above."
MME_CATEGORIES_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
MME_SCALE = 28  # the paper's average divides MME (max 2800) by 28


@dataclass(frozen=True)
class BenchmarkItem:
    """One question: the full prompt text, its image, the gold answer and how to compare it."""

    id: str
    prompt: str
    image: Image.Image = field(repr=False)
    answer: str
    answer_type: str  # choice, number, text, yesno
    category: str | None = None
    group: str | None = None  # items scored together (MME: the two questions of an image)
    precision: int | None = None
    reference: str | None = None  # the gold 4-stage response, where the data holds one (LLaVA-CoT jsonl)


def _decode_image(value: str) -> Image.Image:
    if value.startswith("["):  # MMMU rows may hold a list of images; the first is the question's
        value = ast.literal_eval(value)[0]
    with Image.open(io.BytesIO(base64.b64decode(value))) as image:
        return image.convert("RGB")


def read_tsv(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"benchmark file not found: {path}")
    csv.field_size_limit(sys.maxsize)
    with open(path, encoding="utf-8", newline="") as source:
        rows = list(csv.DictReader(source, delimiter="\t"))
    if not rows:
        raise ValueError(f"{path} holds no rows")
    missing = {"index", "question", "answer", "image"} - set(rows[0])
    if missing:
        raise ValueError(f"{path} is not a VLMEvalKit TSV: missing column(s) {sorted(missing)}")
    return rows


def _present(value) -> bool:
    return value is not None and str(value).strip() not in ("", "nan", "None")


def mcq_prompt(row: dict) -> tuple[str, str]:
    """VLMEvalKit's multiple-choice prompt (hint, question, lettered options, instruction) and the gold letter."""
    options = {letter: row[letter] for letter in OPTION_LETTERS if _present(row.get(letter))}
    lines = [f"Hint: {row['hint']}"] if _present(row.get("hint")) else []
    lines.append(f"Question: {row['question']}")
    if options:
        lines.append("Options:\n" + "\n".join(f"{letter}. {text}" for letter, text in options.items()))
        lines.append(MCQ_INSTRUCTION)
    return "\n".join(lines), str(row["answer"]).strip()


def _mcq(row: dict) -> BenchmarkItem:
    prompt, answer = mcq_prompt(row)
    return BenchmarkItem(str(row["index"]), prompt, _decode_image(row["image"]), answer, "choice",
                         row.get("category"))


def _yes_no(row: dict) -> BenchmarkItem:
    group = row.get("image_path") or hashlib.sha256(row["image"].encode()).hexdigest()[:16]
    return BenchmarkItem(str(row["index"]), row["question"], _decode_image(row["image"]), str(row["answer"]).strip(),
                         "yesno", row.get("category"), group)


def _mmmu(row: dict) -> BenchmarkItem:
    item = _mcq(row)
    if any(_present(row.get(letter)) for letter in OPTION_LETTERS):
        return item
    answer_type = "number" if normalise_number(item.answer) == item.answer.strip() else "text"
    return BenchmarkItem(item.id, row["question"], item.image, item.answer, answer_type, item.category)


def _mathvista(row: dict) -> BenchmarkItem:
    image = _decode_image(row["image"])
    if row.get("question_type") == "multi_choice":
        choices = ast.literal_eval(row["choices"])
        letters = dict(zip(OPTION_LETTERS, choices))
        prompt, _ = mcq_prompt(row | letters)
        answer = next(letter for letter, text in letters.items() if str(text).strip() == str(row["answer"]).strip())
        return BenchmarkItem(str(row["index"]), prompt, image, answer, "choice", row.get("category"))
    answer_type = "number" if row.get("answer_type") in ("integer", "float") else "text"
    precision = int(float(row["precision"])) if _present(row.get("precision")) else None
    return BenchmarkItem(str(row["index"]), row["question"], image, str(row["answer"]).strip(), answer_type,
                         row.get("category"), precision=precision)


@dataclass(frozen=True)
class Benchmark:
    """How a benchmark's rows become items and how its score is computed."""

    name: str
    item: callable
    metric: str  # accuracy, mme, judge
    note: str = ""


BENCHMARKS = {
    "mmbench": Benchmark("MMBench_TEST_EN_V11", _mcq, "accuracy", "circular evaluation not applied"),
    "mmstar": Benchmark("MMStar", _mcq, "accuracy"),
    "ai2d": Benchmark("AI2D_TEST_NO_MASK", _mcq, "accuracy"),
    "hallusionbench": Benchmark("HallusionBench", _yes_no, "accuracy", "question-level accuracy (aAcc)"),
    "mmmu": Benchmark("MMMU_DEV_VAL", _mmmu, "accuracy"),
    "mathvista": Benchmark("MathVista_MINI", _mathvista, "accuracy",
                           "rule-based answer extraction; the official metric extracts answers with GPT"),
    "mme": Benchmark("MME", _yes_no, "mme", "perception + cognition score, acc + acc+ per subtask (max 2800)"),
    "mmvet": Benchmark("MMVet", _mcq, "judge", "needs the GPT-4 grader; predictions saved, no rule-based score"),
}
PAPER_BENCHMARKS = tuple(BENCHMARKS)


def load_benchmark(name: str, path: str | Path, limit: int | None = None) -> list[BenchmarkItem]:
    """Items of benchmark ``name`` (a key of :data:`BENCHMARKS`, or ``llava_cot`` for jsonl data)."""
    if name == "llava_cot":
        data = load_data(path)
        records = data.records[:limit]
        missing = [r.id for r in records if r.answer is None]
        if missing:
            raise ValueError(f"{len(missing)} records of {path} have no gold answer (first: {missing[0]})")
        return [BenchmarkItem(r.id, r.question, open_image(data.image_root, r), r.answer,
                              r.answer_type or "text", r.tier, reference=r.response) for r in records]
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose from {sorted(BENCHMARKS) + ['llava_cot']}")
    rows = read_tsv(path)[:limit]
    return [BENCHMARKS[name].item(row) for row in rows]


def yes_no(text: str) -> str | None:
    """The first yes/no word of the CONCLUSION (or of the text when there is none)."""
    inner = conclusion_text(text)
    match = re.search(r"\b(yes|no)\b", (inner if inner is not None else text).lower())
    return match.group(1) if match else None


def item_correct(item: BenchmarkItem, response: str) -> bool:
    """Rule-based correctness of one response."""
    if item.answer_type == "yesno":
        return yes_no(response) == item.answer.lower()
    if item.answer_type == "number" and item.precision is not None:
        predicted, gold = extract_answer(response, "number"), normalise_number(item.answer)
        return predicted is not None and gold is not None and math.isclose(
            round(float(predicted), item.precision), round(float(gold), item.precision))
    return is_correct(response, item.answer, item.answer_type)


def mme_score(items: list[BenchmarkItem], hits: list[bool]) -> dict:
    """MME: per subtask, acc (questions) + acc+ (images with both questions right), each in %, summed."""
    by_category: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for item, hit in zip(items, hits):
        by_category[item.category or "all"][item.group].append(hit)
    per_category = {}
    for category, groups in by_category.items():
        answers = [h for group in groups.values() for h in group]
        per_category[category] = (100 * sum(answers) / len(answers)
                                  + 100 * sum(all(g) for g in groups.values()) / len(groups))
    perception = sum(v for k, v in per_category.items() if k.lower() not in MME_CATEGORIES_COGNITION)
    cognition = sum(v for k, v in per_category.items() if k.lower() in MME_CATEGORIES_COGNITION)
    return {"score": perception + cognition, "perception": perception, "cognition": cognition,
            "per_category": per_category}


def score_responses(name: str, items: list[BenchmarkItem], responses: list[str]) -> dict:
    """Score one round of responses: ``score`` (accuracy in %, or the MME total), ``stderr``, per category."""
    metric = BENCHMARKS[name].metric if name in BENCHMARKS else "accuracy"
    if metric == "judge":
        return {"score": None, "judge_required": True, "n": len(items)}
    hits = [item_correct(item, response) for item, response in zip(items, responses, strict=True)]
    if metric == "mme":
        return mme_score(items, hits) | {"n": len(items)}
    accuracy = sum(hits) / len(hits)
    categories: dict[str, list[bool]] = defaultdict(list)
    for item, hit in zip(items, hits):
        if item.category:
            categories[item.category].append(hit)
    return {
        "score": 100 * accuracy,
        "stderr": 100 * math.sqrt(accuracy * (1 - accuracy) / len(hits)),
        "n": len(hits),
        "per_category": {k: 100 * sum(v) / len(v) for k, v in sorted(categories.items())},
    }


def paper_average(scores: dict[str, float | None]) -> float | None:
    """Mean of the 8 benchmark scores with MME divided by 28 (paper Table 2); None unless all 8 are scored."""
    values = [scores.get(name) for name in PAPER_BENCHMARKS]
    if any(v is None for v in values):
        return None
    return sum(v / MME_SCALE if name == "mme" else v for name, v in zip(PAPER_BENCHMARKS, values)) / len(values)
