"""The four LLaVA-CoT reasoning stages: parsing, truncation Y_{<i} / Y_{>=i}, the CONCLUSION
(whose answer :mod:`sherlock.answers` reads).

A response is ``<SUMMARY>…</SUMMARY> <CAPTION>…</CAPTION> <REASONING>…</REASONING>
<CONCLUSION>…</CONCLUSION>`` (method spec §1, Notation). Truncation follows the paper
(App. B.2): step i = 1 keeps nothing, 2 keeps SUMMARY, 3 keeps SUMMARY + CAPTION and 4 keeps
SUMMARY + CAPTION + the first half of REASONING. Prefix + suffix always re-joins to the response.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

STAGES = ("SUMMARY", "CAPTION", "REASONING", "CONCLUSION")
NUM_TRUNCATION_STEPS = 4  # n in Eq. 8
CONCLUSION_END = "</CONCLUSION>"
# Octopus's self-correction response (arXiv 2602.08503): attempts joined by an empty tag pair, a literal string
SC_OPEN, SC_CLOSE = "<self-correction>", "</self-correction>"
SEP = f"\n\n{SC_OPEN}\n{SC_CLOSE}\n\n"
_SEP_ANY = re.compile(rf"\s*{SC_OPEN}\s*{SC_CLOSE}\s*")

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


def attempts(response: str) -> list[str]:
    """The attempts of a response: one, or those an Octopus response joins with SEP (any whitespace around it)."""
    return _SEP_ANY.split(response)


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


def beta_weight(truncation_step, noise_level, num_steps: int = NUM_TRUNCATION_STEPS):
    """w(i, n, ε) = 1 / (0.5 + (i/n)^(0.5 + ε/2)), the per-sample factor of β in Eq. 8: later truncation
    steps and stronger noise weigh less. Numbers or tensors (:func:`sherlock.losses.dynamic_beta`).
    """
    return 1.0 / (0.5 + (truncation_step / num_steps) ** (0.5 + noise_level / 2))


def cut_after_conclusion(text: str) -> str:
    """Keep generated text up to and including the first ``</CONCLUSION>`` (spec §1, Stage II)."""
    end = text.find(CONCLUSION_END)
    return text if end < 0 else text[: end + len(CONCLUSION_END)]


def cut_attempt(text: str, one_attempt: bool = False) -> str:
    """Generated text up to its first ``</CONCLUSION>``; ``one_attempt``: also before a ``<self-correction>``
    (the end of an Octopus attempt).
    """
    if one_attempt:
        text = text.split(SC_OPEN, 1)[0].rstrip()
    return cut_after_conclusion(text)


def conclusion_text(response: str) -> str | None:
    """The text inside the first CONCLUSION block, or None when there is none."""
    match = re.search(r"<CONCLUSION>(.*?)</CONCLUSION>", response, re.DOTALL)
    return match.group(1).strip() if match else None
