"""Baselines that could fool an accuracy figure, perception checks, and paired statistics.

- **Blind prior**: the most likely answer of each question text in the training data (for
  multiple choice, the option whose text is that answer, else the most likely option letter),
  with no model and no image. A checkpoint below it has learnt nothing from the pixels.
- **Blank image**: the same prompts with a white image (measured by evaluation).
- **Caption checks** (synthetic task): is the CAPTION exact, are the occupied cells right, and
  are colour / kind / size right at the gold cells; is the SUMMARY the gold one.
- **Departure stage**: the first of the four stages where a response's text differs from the
  gold (or Y^l from Y^w): a histogram says whether errors are misreadings or reasoning.
- **Paired statistics**: SC − direct (or checkpoint A − B) on the same items, with a paired
  bootstrap 95 % interval and McNemar's exact test on the discordant items.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict

import numpy as np

from sherlock.data.schema import Record
from sherlock.reasoning import STAGES

_OPTION = re.compile(r"^([A-I])\. (.*)$", re.MULTILINE)
_CAPTION_SHAPE = re.compile(r"([a-z]+(?: [a-z]+)?): an? (small|large) ([a-z]+) ([a-z]+)")
BOOTSTRAP_RESAMPLES = 2000


def stage_text(response: str, stage: str) -> str | None:
    """The text inside ``<stage>…</stage>`` (the first occurrence), or None."""
    match = re.search(rf"<{stage}>(.*?)</{stage}>", response, re.DOTALL)
    return match.group(1).strip() if match else None


def split_options(question: str) -> tuple[str, dict[str, str]]:
    """``(question stem, {letter: option text})`` of a synthetic question ("Options:" block)."""
    stem, _, block = question.partition("\nOptions:\n")
    return stem, dict(_OPTION.findall(block))


def _answer_text(record: Record) -> str:
    if record.answer_type == "choice":
        return split_options(record.question)[1].get(record.answer, record.answer)
    return record.answer


class BlindPrior:
    """Most likely answer per question stem, learnt from labelled training records (no image)."""

    def __init__(self, training: list[Record]):
        self.by_stem: dict[str, Counter] = defaultdict(Counter)
        self.overall: Counter = Counter()
        self.letters: Counter = Counter()
        for record in training:
            self.count(record, 1)
        if not self.overall:
            raise ValueError("the blind prior needs labelled training records")

    def count(self, record: Record, step: int) -> None:
        """Add (``step`` = 1) or remove (−1) one labelled record's answer."""
        if record.answer is None:
            return
        answer = _answer_text(record)
        self.by_stem[split_options(record.question)[0]][answer] += step
        self.overall[answer] += step
        if record.answer_type == "choice":
            self.letters[record.answer] += step

    def predict(self, question: str) -> str:
        """The prior's answer: an option letter for a multiple-choice question, else the answer text."""
        stem, options = split_options(question)
        counts = self.by_stem.get(stem)
        counts = counts if counts and max(counts.values()) > 0 else self.overall
        if options:
            ranked = sorted(options, key=lambda letter: (-counts[options[letter]], -self.letters[letter], letter))
            return ranked[0]
        return max(sorted(counts), key=lambda answer: counts[answer])

    def accuracy(self, questions: list[str], answers: list[str]) -> float:
        """Fraction of items whose gold answer (letter or text, case-insensitive) the prior names."""
        if not questions:
            raise ValueError("no items to score the blind prior on")
        hits = [self.predict(q).lower() == a.strip().lower() for q, a in zip(questions, answers, strict=True)]
        return sum(hits) / len(hits)


def leave_one_out_prior_accuracy(records: list[Record]) -> float:
    """Blind-prior accuracy on ``records`` themselves, each predicted by the prior of all the others."""
    labelled = [r for r in records if r.answer is not None]
    prior = BlindPrior(labelled)
    hits = 0
    for record in labelled:
        prior.count(record, -1)
        hits += prior.predict(record.question).lower() == record.answer.strip().lower()
        prior.count(record, 1)
    return hits / len(labelled)


def caption_shapes(caption: str | None) -> dict[str, tuple[str, str, str]]:
    """``{cell: (size, colour, kind)}`` read from a synthetic CAPTION ("top left: a small red circle; …")."""
    if not caption:
        return {}
    return {cell: (size, colour, kind) for cell, size, colour, kind in _CAPTION_SHAPE.findall(caption)}


def perception_scores(responses: list[str], gold: list[str]) -> dict[str, float]:
    """Fractions of items with the SUMMARY right, the CAPTION exact, the occupied cells exact, and of
    gold shapes whose colour / kind / size the CAPTION gets right at their cell.
    """
    counts = Counter()
    shapes = 0
    for response, reference in zip(responses, gold, strict=True):
        predicted_caption, gold_caption = stage_text(response, "CAPTION"), stage_text(reference, "CAPTION")
        counts["summary_exact"] += stage_text(response, "SUMMARY") == stage_text(reference, "SUMMARY")
        counts["caption_exact"] += predicted_caption == gold_caption
        predicted, expected = caption_shapes(predicted_caption), caption_shapes(gold_caption)
        counts["cells_exact"] += set(predicted) == set(expected)
        for cell, (size, colour, kind) in expected.items():
            seen = predicted.get(cell)
            counts["colour_at_cell"] += seen is not None and seen[1] == colour
            counts["kind_at_cell"] += seen is not None and seen[2] == kind
            counts["size_at_cell"] += seen is not None and seen[0] == size
        shapes += len(expected)
    if not gold:
        raise ValueError("no items to score perception on")
    items = {key: counts[key] / len(gold) for key in ("summary_exact", "caption_exact", "cells_exact")}
    return items | {key: counts[key] / max(shapes, 1) for key in ("colour_at_cell", "kind_at_cell", "size_at_cell")}


def departure_stage(response: str, reference: str) -> str:
    """First stage whose text differs between ``response`` and ``reference`` (``none`` if all agree)."""
    for stage in STAGES:
        if stage_text(response, stage) != stage_text(reference, stage):
            return stage
    return "none"


def departure_histogram(responses: list[str], references: list[str]) -> dict[str, int]:
    """Counts of :func:`departure_stage` over pairs, every stage listed (zeros included)."""
    counts = Counter(departure_stage(r, g) for r, g in zip(responses, references, strict=True))
    return {stage: counts[stage] for stage in (*STAGES, "none")}


def mcnemar_p(fixed: int, broken: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (binomial, p = 1/2)."""
    n = fixed + broken
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(fixed, broken) + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_difference(after: list[float], before: list[float], seed: int = 0,
                      resamples: int = BOOTSTRAP_RESAMPLES) -> dict[str, float]:
    """Score of ``after`` − ``before`` on the same items (hits, or 0–1 grades), in points, with a paired
    bootstrap 95 % CI.

    ``fixed``: items that scored higher after; ``broken``: lower (for hits: right after and wrong
    before, and the reverse); ``p_mcnemar`` tests whether they differ.
    """
    if len(after) != len(before) or not after:
        raise ValueError(f"paired statistics need equal, non-empty hit lists (got {len(after)} and {len(before)})")
    deltas = np.asarray(after, dtype=np.float64) - np.asarray(before, dtype=np.float64)
    n = len(deltas)
    means = deltas[np.random.default_rng(seed).integers(0, n, (resamples, n))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    fixed, broken = int((deltas > 0).sum()), int((deltas < 0).sum())
    return {"difference": 100 * float(deltas.mean()), "ci_low": 100 * float(low), "ci_high": 100 * float(high),
            "fixed": fixed, "broken": broken, "p_mcnemar": mcnemar_p(fixed, broken), "n": n}
