"""Benchmark adapters: VLMEvalKit's TSV files and LLaVA-CoT-style jsonl data, with rule-based scoring.

VLMEvalKit distributes each benchmark as one TSV with a base64 ``image`` column (MMBench_DEV_EN_V11,
MMStar, AI2D_TEST_NO_MASK, HallusionBench, MMMU_DEV_VAL, MathVista_MINI, MME, MMVet). Read as
VLMEvalKit reads them: an ``image`` cell of at most 64 characters names the row whose image it
repeats, a cell may hold a list of images, options come from the letter columns or an ``options``
list. A row that cannot become a question (an image that does not decode, a reference to no image,
no gold answer) is quarantined with its line and reason; past a bad fraction the file is refused.

The scores are rule-based (option letters, yes/no, numbers with the benchmark's precision) with each
benchmark's official aggregation: MMBench circular (a question counts only when every rotation is
right), HallusionBench aAcc/fAcc/qAcc, MME acc + acc+ per subtask, MMMU per split. MM-Vet's
open-ended answers are graded 0–1 by a grader (:func:`load_grader`): the keyword default
(:func:`mmvet_keyword_grade`, MM-Vet's ``<AND>``/``<OR>`` answer syntax without its GPT-4 grader) or a
model judge an installed package registers. MathVista's score is marked as rule-extracted (the
official metric extracts answers with GPT).
"""

from __future__ import annotations

import ast
import base64
import binascii
import csv
import dataclasses
import hashlib
import io
import math
import re
import sys
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from sherlock import distributed
from sherlock.answers import (
    answer_part,
    extract_answer,
    infer_answer_type,
    is_correct,
    normalise_number,
    normalise_text,
    numbers_in,
    options_in,
)
from sherlock.chat import Context
from sherlock.config import registered
from sherlock.data.llava_cot import DEFAULT_MAX_BAD_FRACTION, DataQualityError, load_data
from sherlock.data.schema import MAX_DATA_IMAGE_PIXELS, open_image, write_jsonl

OPTION_LETTERS = "ABCDEFGHI"
MCQ_INSTRUCTION = "Please select the correct answer from the options above."
MME_CATEGORIES_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
MME_SCALE = 28  # the paper's average divides MME (max 2800) by 28
NOT_UTF8 = re.compile("[\udc80-\udcff]")  # bytes that are not UTF-8, as surrogateescape keeps them
IMAGE_REFERENCE_LENGTH = 64  # VLMEvalKit: an image cell this short is the index of the row whose image it repeats
CIRCULAR_OFFSET = 1_000_000  # MMBench: row index + k·10⁶ is rotation k of question ``index``
GRADERS = "sherlock.graders"  # entry-point group of MM-Vet graders: grade(question, gold, response) -> 0..1
Grader = Callable[[str, str, str], float]


class BadRow(ValueError):
    """A benchmark row that cannot become a question (quarantined with its reason)."""


@dataclass(frozen=True)
class BenchmarkItem:
    """One question: the full prompt text, its image, the gold answer and how to compare it.

    ``groups`` name the items scored together by the benchmark's metric: ``image`` (MME's two
    questions of an image), ``circular`` (MMBench's rotations of a question), ``figure`` and
    ``question`` (HallusionBench's fAcc and qAcc), ``split`` (MMMU's dev and validation).
    """

    id: str
    prompt: str
    image: Image.Image = field(repr=False)
    answer: str
    answer_type: str  # choice, number, text, yesno, open (graded 0–1)
    category: str | None = None
    groups: Mapping[str, str] = field(default_factory=dict)
    precision: int | None = None
    reference: str | None = None  # the gold 4-stage response, where the data holds one (LLaVA-CoT jsonl)
    options: Mapping[str, str] = field(default_factory=dict)  # letter -> option text (multiple choice)
    extra_images: tuple[Image.Image, ...] = field(default=(), repr=False)  # MMMU: the question's further images
    context: Context = ()  # the earlier turns of its conversation (multi-turn LLaVA-CoT)

    @property
    def images(self) -> list[Image.Image]:
        """Every image of the question, in order: what the model is given."""
        return [self.image, *self.extra_images]


def _decode_images(value: str) -> list[Image.Image]:
    """The images of an ``image`` cell: one base64 string, or a Python list of them (MMMU)."""
    cells = [value]
    if value.startswith("["):
        try:
            cells = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise BadRow("image cell starts with '[' but is not a list of base64 strings") from None
        if not cells or not all(isinstance(cell, str) for cell in cells):
            raise BadRow("image cell is an empty list or holds something other than base64 strings")
    images = []
    for number, cell in enumerate(cells, 1):
        try:
            data = base64.b64decode(cell, validate=True)
        except (binascii.Error, ValueError):
            raise BadRow(f"image {number} is not base64") from None
        try:
            with Image.open(io.BytesIO(data)) as image:
                if image.width * image.height > MAX_DATA_IMAGE_PIXELS:
                    raise BadRow(f"image {number} is {image.width}x{image.height}, over the {MAX_DATA_IMAGE_PIXELS}-"
                                 "pixel limit")
                images.append(image.convert("RGB"))  # decodes every pixel: a truncated file fails here
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
            raise BadRow(f"image {number} does not decode ({type(error).__name__}: {error})") from None
    return images


def _first_image(row: dict) -> Image.Image:
    """The question's image (the first of a list: the single-image benchmarks hold one)."""
    return _decode_images(row["image"])[0]


def read_tsv(path: str | Path) -> list[tuple[int, dict, str | None]]:
    """``(line, row, fault)`` of every data row, with VLMEvalKit's image references resolved; ``fault``
    says why the row cannot be read (``None``: it can), and the row is then quarantined with its line.

    An ``image`` cell of at most :data:`IMAGE_REFERENCE_LENGTH` characters is the index of the row
    whose image it repeats ("for saving space"); the row gets that image and ``image_of`` = the index.
    Faults: a row with more or fewer cells than the header, bytes that are not UTF-8 (the file is read
    with them escaped, so only their rows are lost), an empty image cell, a reference to a missing row
    (a short cell of digits) or to another reference.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"benchmark file not found: {path}")
    csv.field_size_limit(sys.maxsize)
    text = path.read_bytes().decode("utf-8", errors="surrogateescape")
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t")
    rows = [(reader.line_num, row) for row in reader]
    columns = set(reader.fieldnames or ())
    if not rows:
        raise ValueError(f"{path} holds no rows")
    if "answer" not in columns and {"index", "question", "image"} <= columns:
        raise ValueError(f"{path} has no 'answer' column: it is a test split whose answers are not public "
                         "(e.g. MMBench_TEST_EN_V11); evaluate on the split that has them (MMBench_DEV_EN_V11.tsv)")
    missing = {"index", "question", "answer", "image"} - columns
    if missing:
        raise ValueError(f"{path} is not a VLMEvalKit TSV: missing column(s) {sorted(missing)}")
    images = {str(row["index"]): row["image"] or "" for _, row in rows}
    resolved = []
    for line, row in rows:
        cell, fault = row["image"] or "", _row_fault(row, len(columns))
        if fault is None and not cell.strip():
            fault = "the image cell is empty"
        elif fault is None and len(cell) <= IMAGE_REFERENCE_LENGTH and (cell.strip() in images
                                                                         or cell.strip().isdigit()):
            target = images.get(cell.strip())
            if target is None or len(target) <= IMAGE_REFERENCE_LENGTH:
                fault = (f"image cell {cell.strip()!r} refers to row index {cell.strip()!r}, which "
                         + ("does not exist" if target is None else "holds a reference itself, not an image"))
            else:
                row = row | {"image": target, "image_of": cell.strip()}
        resolved.append((line, row, fault))
    return resolved


def _row_fault(row: dict, num_columns: int) -> str | None:
    """Why a TSV row cannot be read as its header says: ragged, or not UTF-8 (``None``: it can)."""
    if None in row:  # csv puts cells past the header under the key None
        return f"{num_columns + len(row[None])} cells; the header has {num_columns}"
    if any(value is None for value in row.values()):
        return f"{sum(value is not None for value in row.values())} cells; the header has {num_columns}"
    if not_utf8 := [key for key, value in row.items() if NOT_UTF8.search(value)]:
        return f"bytes that are not UTF-8 in column(s) {not_utf8}"
    return None


def _present(value) -> bool:
    return value is not None and str(value).strip() not in ("", "nan", "None")


def _options(row: dict) -> dict[str, str]:
    """Lettered options: the letter columns A–I, or an ``options`` cell holding a Python list (HF MMMU)."""
    options = {letter: row[letter] for letter in OPTION_LETTERS if _present(row.get(letter))}
    if options or not _present(row.get("options")):
        return options
    try:
        listed = ast.literal_eval(row["options"])
    except (ValueError, SyntaxError):
        raise BadRow("options cell is not a Python list") from None
    if not isinstance(listed, list) or len(listed) > len(OPTION_LETTERS):
        raise BadRow(f"options cell must list at most {len(OPTION_LETTERS)} options")
    return {letter: str(text) for letter, text in zip(OPTION_LETTERS, listed)}


def _gold(row: dict) -> str:
    if not _present(row.get("answer")):
        raise BadRow("no gold answer")
    return str(row["answer"]).strip()


def mcq_prompt(row: dict) -> tuple[str, str]:
    """VLMEvalKit's multiple-choice prompt (hint, question, lettered options, instruction) and the gold answer."""
    options = _options(row)
    lines = [f"Hint: {row['hint']}"] if _present(row.get("hint")) else []
    lines.append(f"Question: {row['question']}")
    if options:
        lines.append("Options:\n" + "\n".join(f"{letter}. {text}" for letter, text in options.items()))
        lines.append(MCQ_INSTRUCTION)
    return "\n".join(lines), _gold(row)


def _mcq(row: dict) -> BenchmarkItem:
    """A lettered question with every image of its row (one for all but MMMU's multi-image rows)."""
    prompt, answer = mcq_prompt(row)
    first, *rest = _decode_images(row["image"])
    return BenchmarkItem(str(row["index"]), prompt, first, answer, "choice", row.get("category"),
                         options=_options(row), extra_images=tuple(rest))


def _mmbench(row: dict) -> BenchmarkItem:
    item = _mcq(row)
    try:
        question = int(float(row["index"])) % CIRCULAR_OFFSET
    except ValueError:
        raise BadRow(f"index {row['index']!r} is not a number (MMBench's rotations are index + k·10⁶)") from None
    return dataclasses.replace(item, groups={"circular": str(question)})


def _image_group(row: dict) -> str:
    """The image a row asks about: ``image_path``, else the (resolved) image cell's digest."""
    if _present(row.get("image_path")):
        return str(row["image_path"])
    return hashlib.sha256(row["image"].encode()).hexdigest()[:16]


def _yes_no(row: dict) -> BenchmarkItem:
    return BenchmarkItem(str(row["index"]), row["question"], _first_image(row), _gold(row), "yesno",
                         row.get("category"), {"image": _image_group(row)})


def _hallusionbench(row: dict) -> BenchmarkItem:
    """FAcc groups by (l2-category, set, figure), qAcc by (l2-category, set, question), as VLMEvalKit does:
    set, figure and question are the 4th–6th ``_``-separated parts of the index, else columns of those names.
    """
    parts = str(row["index"]).split("_")
    ids = parts[3:6] if len(parts) >= 6 else [row.get(key) for key in ("set_id", "figure_id", "question_id")]
    if not all(_present(i) for i in ids):
        raise BadRow("no set/figure/question ids (index parts 4–6 or set_id, figure_id, question_id columns)")
    l2, (set_id, figure, question) = row.get("l2-category", ""), (str(i) for i in ids)
    return dataclasses.replace(_yes_no(row), groups={"figure": f"{l2}_{set_id}_{figure}",
                                                     "question": f"{l2}_{set_id}_{question}"})


def _mmmu(row: dict) -> BenchmarkItem:
    """Every image of the row goes to the model (the first, then the rest), as MMMU's questions
    refer to ``<image 1>``, ``<image 2>`` …; a free-form question is a number or text.
    """
    split = {"split": str(row["split"])} if _present(row.get("split")) else {}
    item = dataclasses.replace(_mcq(row), groups=split)
    if item.options:
        return item
    answer_type = "number" if normalise_number(item.answer) == item.answer.strip() else "text"
    return dataclasses.replace(item, prompt=row["question"], answer_type=answer_type, options={})


def _mathvista(row: dict) -> BenchmarkItem:
    """The ``question`` cell verbatim (it already holds the hint, the question and the choices)."""
    image, answer = _first_image(row), _gold(row)
    if row.get("question_type") == "multi_choice":
        try:
            choices = [str(c).strip() for c in ast.literal_eval(row["choices"])]
        except (ValueError, SyntaxError, TypeError):
            raise BadRow("choices cell is not a Python list") from None
        letters = dict(zip(OPTION_LETTERS, choices))
        if _present(row.get("answer_option")):
            gold = str(row["answer_option"]).strip().upper()
        else:
            gold = next((letter for letter, text in letters.items() if text.casefold() == answer.casefold()), None)
        if gold not in letters:
            raise BadRow(f"the answer {answer!r} is none of the choices {choices}")
        return BenchmarkItem(str(row["index"]), row["question"], image, gold, "choice", row.get("category"),
                             options=letters)
    answer_type = "number" if row.get("answer_type") in ("integer", "float") else "text"
    precision = int(float(row["precision"])) if _present(row.get("precision")) else None
    return BenchmarkItem(str(row["index"]), row["question"], image, answer, answer_type, row.get("category"),
                         precision=precision)


def _mmvet(row: dict) -> BenchmarkItem:
    """The question verbatim, graded against the gold answer; ``category`` lists its capabilities
    (``rec,ocr,…``).
    """
    return BenchmarkItem(str(row["index"]), row["question"], _first_image(row), _gold(row), "open",
                         row.get("category"))


@dataclass(frozen=True)
class Benchmark:
    """How a benchmark's rows become items and how its score is computed."""

    name: str
    item: callable
    metric: str  # accuracy, circular, hallusion, mmmu, mme, graded
    note: str = ""


BENCHMARKS = {
    "mmbench": Benchmark("MMBench_DEV_EN_V11", _mmbench, "circular",
                         "circular: a question counts only when all its rotations are right"),
    "mmstar": Benchmark("MMStar", _mcq, "accuracy"),
    "ai2d": Benchmark("AI2D_TEST_NO_MASK", _mcq, "accuracy"),
    "hallusionbench": Benchmark("HallusionBench", _hallusionbench, "hallusion",
                                "score = aAcc (questions); fAcc (figures) and qAcc (questions over figures) beside it"),
    "mmmu": Benchmark("MMMU_DEV_VAL", _mmmu, "mmmu",
                      "score = the validation split (dev beside it); every image of a multi-image question"),
    "mathvista": Benchmark("MathVista_MINI", _mathvista, "accuracy",
                           "rule-based answer extraction; the official metric extracts answers with GPT"),
    "mme": Benchmark("MME", _yes_no, "mme", "perception + cognition score, acc + acc+ per subtask (max 2800)"),
    "mmvet": Benchmark("MMVet", _mmvet, "graded", "mean 0–1 grade ×100 and per capability; the grader is a "
                       "setting (rule-based by default; the official one is GPT-4)"),
}
PAPER_BENCHMARKS = tuple(BENCHMARKS)


def load_benchmark(name: str, path: str | Path, limit: int | None = None, quarantine: str | Path | None = None,
                   max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION) -> list[BenchmarkItem]:
    """Items of benchmark ``name`` (a key of :data:`BENCHMARKS`, or ``llava_cot`` for jsonl data).

    TSV rows that cannot become items go to ``quarantine`` (jsonl: ``line``, ``index``, ``reason``;
    default ``<tsv>.quarantine.jsonl``, written only when there is one); more than
    ``max_bad_fraction`` of them is a :class:`DataQualityError` naming the file.
    """
    if name == "llava_cot":
        data = load_data(path)
        records = data.records[:limit]
        missing = [r.id for r in records if r.answer is None]
        if missing:
            raise ValueError(f"{len(missing)} records of {path} have no gold answer (first: {missing[0]})")
        return [BenchmarkItem(r.id, r.question, open_image(data.image_root, r), r.answer,
                              r.answer_type or "text", r.tier, reference=r.response, options=options_in(r.question),
                              context=r.context)
                for r in records]
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose from {sorted(BENCHMARKS) + ['llava_cot']}")
    rows = read_tsv(path)[:limit]
    items, bad = [], []
    for line, row, fault in rows:
        try:
            if fault is not None:
                raise BadRow(fault)
            items.append(BENCHMARKS[name].item(row))
        except BadRow as error:
            bad.append({"line": line, "index": row.get("index"), "reason": str(error)})
    quarantine = Path(quarantine or Path(path).with_suffix(".quarantine.jsonl"))
    if bad and distributed.is_main():  # every rank reads the file; rank 0 reports
        write_jsonl(bad, quarantine)
    if len(bad) > max_bad_fraction * len(rows):
        raise DataQualityError(f"{len(bad)} of {len(rows)} rows of {path} are invalid (limit {max_bad_fraction:.1%}; "
                               f"first: line {bad[0]['line']}, index {bad[0]['index']}: {bad[0]['reason']}); "
                               f"every row's reason in {quarantine}")
    return items


NEGATORS = frozenset({"not", "no", "never", "neither", "nor", "without", "isnt", "arent", "wasnt", "werent",
                      "doesnt", "dont", "didnt", "cannot", "cant", "wont"})  # as normalise_text writes them
NEGATION_WINDOW = 3  # an element is denied when one of NEGATORS is among the words just before it
HEDGES = (" or ", " either ", " not sure ", " unsure ", " maybe ", " perhaps ", " could be ", " might be ",
          " cannot tell ", " hard to tell ", " cannot determine ")  # a list of candidates is not an answer


def _affirmed(words: list[str], element: list[str]) -> bool:
    """``element`` (words) occurs in ``words`` at least once with no negator among the
    :data:`NEGATION_WINDOW` words before it (``"red, not blue"`` affirms red, ``"not red"`` does not).
    """
    size = len(element)
    return any(words[start:start + size] == element
               and NEGATORS.isdisjoint(words[max(0, start - NEGATION_WINDOW):start])
               for start in range(len(words) - size + 1))


def mmvet_keyword_grade(question: str, gold: str, response: str) -> float:
    """MM-Vet's answer syntax graded by keywords, without its GPT-4 grader: the gold answer's ``<OR>``
    alternatives, each a list of ``<AND>`` elements; the grade is the best alternative's fraction of
    elements the response's CONCLUSION affirms (numbers compared as numbers, text as a normalised word
    sequence not denied by a negator just before it). A hedged CONCLUSION (``"4 or 5"``, ``"not sure"``)
    grades 0. On the graded set of ``tests/fixtures/mmvet_graded.jsonl`` it never exceeds the reference
    grade and misses every paraphrase: a keyword grader, below the GPT-4 one (docs/stages.md).
    """
    text = answer_part(response)
    normalised = normalise_text(text)
    if any(hedge in f" {normalised} " for hedge in HEDGES):
        return 0.0
    words, numbers = normalised.split(), set(numbers_in(text))
    grade = 0.0
    for alternative in gold.split("<OR>"):
        elements = [element.strip() for element in alternative.split("<AND>") if element.strip()]
        found = [normalise_number(e) in numbers if infer_answer_type(e) == "number"
                 else _affirmed(words, normalise_text(e).split()) for e in elements]
        grade = max(grade, sum(found) / len(found)) if found else grade
    return grade


def load_grader(name: str) -> Grader:
    """``keyword`` (:func:`mmvet_keyword_grade`) or a grader registered under the entry-point group
    :data:`GRADERS` by an installed package (a model judge: ``grade(question, gold, response)`` → 0–1).
    """
    return registered(GRADERS, name, {"keyword": mmvet_keyword_grade}, "grader")


def item_score(item: BenchmarkItem, response: str, grader: Grader = mmvet_keyword_grade) -> float:
    """1.0 or 0.0 by the rules, or the grader's 0–1 grade of an open-ended answer."""
    if item.answer_type == "open":
        grade = float(grader(item.prompt, item.answer, response))
        if not 0.0 <= grade <= 1.0:
            raise ValueError(f"the grader gave {grade} for item {item.id}: grades are in [0, 1]")
        return grade
    return float(item_correct(item, response))


def read_answer(item: BenchmarkItem, response: str) -> str | None:
    """The answer ``response`` gives to ``item``, read as its kind (an open answer as text), or None: what
    majority voting counts (:func:`sherlock.headroom.sample_headroom`).
    """
    return extract_answer(response, "text" if item.answer_type == "open" else item.answer_type, item.options)


def item_correct(item: BenchmarkItem, response: str) -> bool:
    """Rule-based correctness of one response (:mod:`sherlock.answers`; MathVista's numbers to the
    item's precision).
    """
    if item.answer_type == "number" and item.precision is not None:
        predicted, gold = extract_answer(response, "number"), normalise_number(item.answer)
        return predicted is not None and gold is not None and math.isclose(
            round(float(predicted), item.precision), round(float(gold), item.precision))
    return is_correct(response, item.answer, item.answer_type, item.options)


def _grouped(items: list[BenchmarkItem], hits: list[bool], key: str) -> dict[str, list[bool]]:
    groups: dict[str, list[bool]] = defaultdict(list)
    for item, hit in zip(items, hits):
        groups[item.groups[key]].append(hit)
    return groups


def _all_right(groups: dict[str, list[bool]]) -> float:
    """Percent of groups whose every item is right."""
    return 100 * sum(all(g) for g in groups.values()) / len(groups)


def mme_score(items: list[BenchmarkItem], hits: list[bool]) -> dict:
    """MME: per subtask, acc (questions) + acc+ (images with both questions right), each in %, summed."""
    by_category: dict[str, list[int]] = defaultdict(list)
    for k, item in enumerate(items):
        by_category[item.category or "all"].append(k)
    per_category = {}
    for category, members in by_category.items():
        answers = [hits[k] for k in members]
        images = _grouped([items[k] for k in members], answers, "image")
        per_category[category] = 100 * sum(answers) / len(answers) + _all_right(images)
    perception = sum(v for k, v in per_category.items() if k.lower() not in MME_CATEGORIES_COGNITION)
    cognition = sum(v for k, v in per_category.items() if k.lower() in MME_CATEGORIES_COGNITION)
    return {"score": perception + cognition, "perception": perception, "cognition": cognition,
            "per_category": per_category}


def _accuracy(hits: list[bool]) -> dict:
    accuracy = sum(hits) / len(hits)
    return {"score": 100 * accuracy, "stderr": 100 * math.sqrt(accuracy * (1 - accuracy) / len(hits))}


def _graded(items: list[BenchmarkItem], grades: list[float]) -> dict:
    """Mean grade in %, its standard error, and per capability (an item counts for each it lists)."""
    mean = sum(grades) / len(grades)
    spread = math.sqrt(max(sum(g * g for g in grades) / len(grades) - mean * mean, 0.0))
    capabilities: dict[str, list[float]] = defaultdict(list)
    for item, grade in zip(items, grades):
        for capability in (item.category or "").split(","):
            if capability.strip():
                capabilities[capability.strip()].append(grade)
    return {"score": 100 * mean, "stderr": 100 * spread / math.sqrt(len(grades)), "n": len(grades),
            "per_category": {k: 100 * sum(v) / len(v) for k, v in sorted(capabilities.items())}}


def score_responses(name: str, items: list[BenchmarkItem], responses: list[str],
                    grader: Grader = mmvet_keyword_grade) -> dict:
    """Score one round of responses: ``score`` (accuracy or mean grade in %, or the MME total), ``stderr``,
    per category, and the benchmark's own aggregates (module docstring).
    """
    return score_items(name, items, [item_score(item, r, grader) for item, r in zip(items, responses, strict=True)])


def score_items(name: str, items: list[BenchmarkItem], hits: list[float]) -> dict:
    """:func:`score_responses` from the items' :func:`item_score` values (each response graded once)."""
    metric = BENCHMARKS[name].metric if name in BENCHMARKS else "accuracy"
    if metric == "graded":
        return _graded(items, hits)
    if metric == "mme":
        return mme_score(items, hits) | {"n": len(items)}
    categories: dict[str, list[bool]] = defaultdict(list)
    for item, hit in zip(items, hits):
        if item.category:
            categories[item.category].append(hit)
    result = _accuracy(hits) | {"n": len(hits),
                                "per_category": {k: 100 * sum(v) / len(v) for k, v in sorted(categories.items())}}
    if metric == "circular":
        questions = _grouped(items, hits, "circular")
        result |= _accuracy([all(g) for g in questions.values()]) | {"n": len(questions), "rows": len(hits),
                                                                    "vanilla": 100 * sum(hits) / len(hits)}
    elif metric == "hallusion":
        result |= {"aAcc": result["score"], "fAcc": _all_right(_grouped(items, hits, "figure")),
                   "qAcc": _all_right(_grouped(items, hits, "question"))}
    elif metric == "mmmu" and any("split" in item.groups for item in items):
        splits = _grouped([i for i in items if "split" in i.groups], [h for i, h in zip(items, hits)
                                                                       if "split" in i.groups], "split")
        result["per_split"] = {split: 100 * sum(v) / len(v) for split, v in sorted(splits.items())}
        if "validation" in splits:
            result |= _accuracy(splits["validation"]) | {"n": len(splits["validation"])}
    return result


def paper_average(scores: dict[str, float | None]) -> tuple[float | None, list[str]]:
    """Mean of the paper's benchmark scores with MME divided by 28 (paper Table 2), and the benchmarks it
    lacks: the paper's average when none is missing, else the mean of those present (None if none is).
    """
    present = {name: scores[name] for name in PAPER_BENCHMARKS if scores.get(name) is not None}
    missing = [name for name in PAPER_BENCHMARKS if name not in present]
    if not present:
        return None, missing
    return sum(v / MME_SCALE if name == "mme" else v for name, v in present.items()) / len(present), missing
