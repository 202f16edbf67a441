"""The four LLaVA-CoT reasoning stages: parsing, truncation Y_{<i} / Y_{>=i}, answer extraction.

A response is ``<SUMMARY>…</SUMMARY> <CAPTION>…</CAPTION> <REASONING>…</REASONING>
<CONCLUSION>…</CONCLUSION>`` (method spec §1, Notation). Truncation follows the paper
(App. B.2): step i = 1 keeps nothing, 2 keeps SUMMARY, 3 keeps SUMMARY + CAPTION and 4 keeps
SUMMARY + CAPTION + the first half of REASONING. Prefix + suffix always re-joins to the response.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

STAGES = ("SUMMARY", "CAPTION", "REASONING", "CONCLUSION")
NUM_TRUNCATION_STEPS = 4  # n in Eq. 8
CONCLUSION_END = "</CONCLUSION>"

_BLOCK = re.compile(r"<(SUMMARY|CAPTION|REASONING|CONCLUSION)>(.*?)</\1>", re.DOTALL)


class ReasoningFormatError(ValueError):
    """A response does not hold the four stages, once each and in order."""


@dataclass(frozen=True)
class ReasoningSteps:
    """The text inside each stage tag and where each block starts in the response."""

    summary: str
    caption: str
    reasoning: str
    conclusion: str
    block_starts: tuple[int, int, int, int]
    reasoning_text_start: int


def parse_stages(response: str) -> ReasoningSteps:
    """Parse a 4-stage response; raise :class:`ReasoningFormatError` naming what is wrong."""
    blocks = list(_BLOCK.finditer(response))
    names = [m.group(1) for m in blocks]
    if tuple(names) != STAGES:
        missing = [s for s in STAGES if s not in names]
        if missing:
            raise ReasoningFormatError(f"missing stage(s): {', '.join(missing)}")
        raise ReasoningFormatError(f"stages out of order or repeated: {names}")
    texts = [m.group(2) for m in blocks]
    return ReasoningSteps(
        *texts,
        block_starts=tuple(m.start() for m in blocks),
        reasoning_text_start=blocks[2].start(2),
    )


def truncate(response: str, step: int) -> tuple[str, str]:
    """Split a response into (Y_{<i}, Y_{>=i}) at truncation step ``step`` = i in {1, 2, 3, 4}.

    i = 4 cuts REASONING at a word boundary after the first half of its words (paper App. B.2).
    Steps 2–4 need a well-formed response (:class:`ReasoningFormatError` otherwise).
    """
    if step not in range(1, NUM_TRUNCATION_STEPS + 1):
        raise ValueError(f"truncation step must be 1..{NUM_TRUNCATION_STEPS}, got {step}")
    if step == 1:  # no prefix: the response need not be well-formed
        return "", response
    steps = parse_stages(response)
    if step in (2, 3):
        cut = steps.block_starts[step - 1]
    else:
        words = list(re.finditer(r"\S+", steps.reasoning))
        half = len(words) // 2
        cut = steps.reasoning_text_start + (words[half - 1].end() if half else 0)
    return response[:cut], response[cut:]


def cut_after_conclusion(text: str) -> str:
    """Keep generated text up to and including the first ``</CONCLUSION>`` (spec §1, Stage II)."""
    end = text.find(CONCLUSION_END)
    return text if end < 0 else text[: end + len(CONCLUSION_END)]


def conclusion_text(response: str) -> str | None:
    """The text inside the first CONCLUSION block, or None when there is none."""
    match = re.search(r"<CONCLUSION>(.*?)</CONCLUSION>", response, re.DOTALL)
    return match.group(1).strip() if match else None


# --- answers -------------------------------------------------------------------------------

ANSWER_TYPES = ("choice", "number", "text")
_CHOICE = re.compile(r"^\(?([A-H])\)?(?:[.:)]|\s|$)")
_CHOICE_PHRASE = re.compile(r"\b(?:answer|option)\s*(?:is|:)?\s*\(?([A-H])\)?\b", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def infer_answer_type(gold: str) -> str:
    """Guess how a gold answer is compared: an option letter, a number, or free text."""
    gold = gold.strip()
    if re.fullmatch(r"\(?[A-H]\)?\.?", gold):
        return "choice"
    if re.fullmatch(_NUMBER.pattern + r"\.?", gold):
        return "number"
    return "text"


def normalise_text(text: str) -> str:
    """Lower-case, drop punctuation and articles, collapse whitespace (VQA-style normalisation)."""
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(_ARTICLES.sub(" ", text).split())


def normalise_number(text: str) -> str | None:
    """The first number in ``text`` in canonical form ("2.0" -> "2", "1,000" -> "1000")."""
    match = _NUMBER.search(text)
    if not match:
        return None
    value = float(match.group(0).replace(",", ""))
    return str(int(value)) if value.is_integer() else repr(value)


def extract_answer(text: str, answer_type: str) -> str | None:
    """Extract a normalised answer of ``answer_type`` from a CONCLUSION text (or whole response).

    Returns None when nothing of that type can be found, so an unparseable answer is wrong
    rather than silently matched.
    """
    inner = conclusion_text(text)
    text = (inner if inner is not None else text).strip()
    if answer_type == "choice":
        match = _CHOICE.match(text) or _CHOICE_PHRASE.search(text)
        return match.group(1).upper() if match else None
    if answer_type == "number":
        return normalise_number(text)
    if answer_type == "text":
        return normalise_text(text) or None
    raise ValueError(f"answer_type must be one of {ANSWER_TYPES}, got {answer_type!r}")


def is_correct(prediction: str, gold: str, answer_type: str | None = None) -> bool:
    """Rule-based match of a predicted response (or conclusion) against a gold answer."""
    answer_type = answer_type or infer_answer_type(gold)
    predicted = extract_answer(prediction, answer_type)
    expected = extract_answer(gold, answer_type)
    return predicted is not None and predicted == expected


def answers_agree(responses: list[str]) -> bool:
    """Rule-based equivalence of the responses' answers (Stage III self-consistency filter).

    Every response needs a CONCLUSION. All conclusions must name the same option letter, else the
    same number, else the same normalised text.
    """
    conclusions = [conclusion_text(r) for r in responses]
    if not conclusions or any(c is None or not c.strip() for c in conclusions):
        return False
    for answer_type in ANSWER_TYPES:
        answers = [extract_answer(c, answer_type) for c in conclusions]
        if all(a is not None for a in answers):
            return len(set(answers)) == 1
    return False
