"""Direct-answer accuracy with a standard error, overall and per difficulty tier."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from sherlock.data.schema import Record, open_image
from sherlock.generation import DecodingConfig, generate
from sherlock.reasoning import is_correct


@dataclass(frozen=True)
class Accuracy:
    """Fraction correct of ``n`` items and its binomial standard error."""

    correct: int
    n: int

    @property
    def value(self) -> float:
        return self.correct / self.n if self.n else float("nan")

    @property
    def stderr(self) -> float:
        return math.sqrt(self.value * (1 - self.value) / self.n) if self.n else float("nan")

    def __str__(self) -> str:
        return f"{100 * self.value:.1f}% ± {100 * self.stderr:.1f} (n={self.n})"


@dataclass(frozen=True)
class EvalResult:
    overall: Accuracy
    per_tier: dict[str, Accuracy] = field(default_factory=dict)
    responses: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        flat = {"accuracy": self.overall.value, "stderr": self.overall.stderr, "n": self.overall.n}
        for tier, acc in self.per_tier.items():
            flat[f"accuracy/{tier}"] = acc.value
        return flat


def score(records: list[Record], responses: list[str]) -> EvalResult:
    """Rule-based scoring of responses against the records' gold answers."""
    missing = [r.id for r in records if r.answer is None]
    if missing:
        raise ValueError(f"{len(missing)} records have no gold answer (first: {missing[0]})")
    hits = [is_correct(resp, r.answer, r.answer_type) for r, resp in zip(records, responses, strict=True)]
    tiers: dict[str, list[bool]] = defaultdict(list)
    for record, hit in zip(records, hits):
        if record.tier:
            tiers[record.tier].append(hit)
    per_tier = {tier: Accuracy(sum(h), len(h)) for tier, h in sorted(tiers.items())}
    return EvalResult(Accuracy(sum(hits), len(hits)), per_tier, responses)


def evaluate_direct(
    model, processor, records: list[Record], image_root: Path, config: DecodingConfig | None = None
) -> EvalResult:
    """Answer every question once (greedy by default) and score the CONCLUSIONs."""
    images = [open_image(image_root, r) for r in records]
    responses = generate(model, processor, [r.question for r in records], images, config=config, desc="evaluating")
    return score(records, responses)
