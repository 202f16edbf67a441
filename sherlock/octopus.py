r"""Octopus (arXiv 2602.08503): self-correction learned by RL on rollouts recombined into correction pairs.

The pieces that work on text and on counts, with no model (``docs/octopus.md``; the spec's section numbers):

- the response format ``o1 ⊕ SEP ⊕ o2`` (§2.2) and how a rollout splits into its attempts (§2.4): o1 is the
  text before the first ``<self-correction>``, o2 the text after the last ``</self-correction>``; a part
  counts only when it holds a complete answer and is cut right after it;
- the pool of n² pairs (o1 of rollout i, o2 of rollout j) by class w→c, c→c, c→w, w→w and the selection of
  the n pairs that fill a group of N = 2n (the paper's Alg. 1, the released code's rule, or at random);
- the reward R = 0.9·r′ + 0.1·format (Eqs. 3, 6; the released code's caps behind a switch);
- which tokens the policy loss sees (Stage I: o1 masked in every correction sequence; Stage II: only where
  c(o1) ≠ c(o2)) and which the o1 KL of Stage I sees.

Answers are read by the project's one extractor (:mod:`sherlock.answers`): a CONCLUSION, else the last
``\boxed{}``. Two response formats share all of it: ``think-boxed`` (``<think>…</think> \boxed{a}``, the
paper's, for instruction-tuned bases) and ``stages`` (the LLaVA-CoT stage tags this project's models write).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sherlock.answers import answer_part, is_correct
from sherlock.reasoning import CONCLUSION_END, SC_CLOSE, SC_OPEN, STAGES, parse_stages

PAIR_CLASSES = ("wc", "cc", "cw", "ww")  # (c(o1), c(o2)): wrong→correct, correct→correct, …
SELECTIONS = ("paper", "code", "random", "none")
MASKS = ("every", "changed", "none")  # Stage I, Stage II, unmasked (the hacking probe)

# r′ by (c(o1), c(o2)) (Eq. 6), and R = 0.9·r′ + 0.1·format
SHAPED_REWARD = {(False, True): 1.0, (True, True): 0.75, (False, False): 0.0, (True, False): -0.25}
ACCURACY_WEIGHT, FORMAT_WEIGHT = 0.9, 0.1

THINK_BOXED_ANSWER = (  # the reasoning prompt of a plain answer (§2.1 Step 1): the trigger's first two sentences
    "You first think through your reasoning process as an internal monologue, enclosed within <think> </think> "
    "tags. Then, provide your final answer enclosed within \\boxed{}."
)
THINK_BOXED_INSTRUCTION = THINK_BOXED_ANSWER + (
    " If you believe the answer can be further enhanced, generate <self-correction> </self-correction> tags "
    "enclosed with no content, and regenerate a new "
    "reasoning process and a new answer from scratch after that. The new response should first think through "
    "your reasoning process as an internal monologue, enclosed within <think> </think> tags. Then, provide your "
    "final answer enclosed within \\boxed{}. All reasoning, answer steps must be included without omission."
)
STAGES_INSTRUCTION = (
    "If you believe the answer can be further enhanced, generate <self-correction> </self-correction> tags "
    "enclosed with no content, and regenerate a new response from scratch after that."
)


def _boxed_end(text: str) -> int | None:
    r"""The index right after the closing brace of the last complete ``\boxed{…}``, or None."""
    start = text.rfind("\\boxed{")
    while start >= 0:
        depth = 0
        for index in range(start + len("\\boxed"), len(text)):
            depth += {"{": 1, "}": -1}.get(text[index], 0)
            if depth == 0:
                return index + 1
        start = text.rfind("\\boxed{", 0, start)
    return None


def _conclusion_end(text: str) -> int | None:
    end = text.rfind(CONCLUSION_END)
    return None if end < 0 else end + len(CONCLUSION_END)


def _think_boxed_well_formed(text: str) -> bool:
    r"""f(s) of §2.5: one ``<think>``, one ``</think>``, then a ``\boxed{}`` (whitespace around tags removed)."""
    s = re.sub(r"\s*([</>])\s*", r"\1", text)
    return (s.count("<think>") == 1 and s.count("</think>") == 1
            and re.fullmatch(r"<think>.*</think>.*\\boxed\{.*\}.*", s, re.DOTALL) is not None)


_STAGES_ONLY = re.compile(r"\s*" + r"\s*".join(f"<{s}>(?:(?!<{s}>).)*?</{s}>" for s in STAGES) + r"\s*", re.DOTALL)


def _stages_well_formed(text: str) -> bool:
    """The four stage blocks, each once, in order, with nothing but whitespace around them."""
    return _STAGES_ONLY.fullmatch(text) is not None and all(text.count(f"<{s}>") == 1 for s in STAGES)


def _think_boxed_attempt(response: str, answer: str) -> str:
    r"""A gold 4-stage response as one ``think-boxed`` attempt: its first three stages thought, the answer boxed."""
    steps = parse_stages(response)
    thought = "\n\n".join(part.strip() for part in (steps.summary, steps.caption, steps.reasoning))
    return f"<think>\n{thought}\n</think>\n\n\\boxed{{{answer}}}"


@dataclass(frozen=True)
class ResponseFormat:
    """How one attempt is written: the instruction appended to the question (and the one that asks for a plain
    answer, "" when the question alone does), the rewrite prompt's line that asks for the format, where its answer
    ends, f(s), and a gold 4-stage response rewritten as an attempt (response, short answer) -> attempt.
    """
    name: str
    instruction: str
    answer_instruction: str
    rewrite_instruction: str
    answer_end: Callable[[str], int | None]
    well_formed: Callable[[str], bool]
    gold_attempt: Callable[[str, str], str]


FORMATS = {f.name: f for f in (
    ResponseFormat("think-boxed", THINK_BOXED_INSTRUCTION, THINK_BOXED_ANSWER,
                   "You first think through the reasoning process as an internal monologue, enclosed within <think> "
                   "</think> tags. Then, provide your final answer enclosed within \\boxed{}.",
                   _boxed_end, _think_boxed_well_formed, _think_boxed_attempt),
    ResponseFormat("stages", STAGES_INSTRUCTION, "",
                   "Write it in four stages, each once and in this order: <SUMMARY> </SUMMARY>, <CAPTION> </CAPTION>, "
                   "<REASONING> </REASONING>, <CONCLUSION> </CONCLUSION>.",
                   _conclusion_end, _stages_well_formed, lambda response, answer: response),
)}

# The mixed-sampling rewrite of o2 (§2.1, paper App. A.3): the question, the ground truth and the model's own o1 as
# the reference answer. The paper's system prompt opens the user turn (not every family's template has a system
# turn).
REWRITE_ROLE = (
    "You are an expert AI assistant. Your task is to generate a high-quality answer to the user's question. You "
    "will be provided with a reference answer and the ground truth. If the reference answer is incorrect, generate "
    "a correct one. If it is correct, generate an improved version. Do NOT mention or analyze the reference answer "
    "in your response. Just provide the direct answer."
)
REWRITE_RULES = (
    "Based on the provided information, generate a new, complete answer.\n"
    "- Ensure the reasoning is correct and leads to the Ground Truth.\n"
    "- If the Reference Answer is wrong, correct it implicitly by providing the right derivation.\n"
    "- If the Reference Answer is correct, rewrite it to be clearer and more logical while keeping a similar length.\n"
    "- {format}\n"
    "- Do not generate thinking process that are too short.\n"
    "- Do not mention the Reference Answer in your response."
)


def rewrite_prompt(question: str, gold: str, reference: str, response_format: ResponseFormat) -> str:
    """The prompt from which a model rewrites o2 (§2.1 mixed sampling): role, question, ground truth, o1 as the
    reference answer, the rules with the format's line.
    """
    return (f"{REWRITE_ROLE}\n\nQuestion: {question}\n\nGround Truth: {gold}\n\nReference Answer:\n{reference}\n\n"
            f"Instruction:\n{REWRITE_RULES.format(format=response_format.rewrite_instruction)}")


def trigger_prompt(question: str, response_format: ResponseFormat) -> str:
    """The question, a blank line, then the format's instruction (§2.2)."""
    return f"{question}\n\n{response_format.instruction}"


def answer_prompt(question: str, response_format: ResponseFormat) -> str:
    """The question as a plain answer is asked: alone, or with the format's answer instruction (§2.1 Step 1)."""
    return f"{question}\n\n{response_format.answer_instruction}" if response_format.answer_instruction else question


def one_round(text: str) -> str:
    """The rollout cut at a second ``<self-correction>`` after its first ``</self-correction>`` (§2.3)."""
    close = text.find(SC_CLOSE)
    if close < 0:
        return text
    again = text.find(SC_OPEN, close + len(SC_CLOSE))
    return text if again < 0 else text[:again]


@dataclass(frozen=True)
class Attempts:
    """A rollout's attempts as character positions of its text: ``o1`` where the first answer ends, ``o2``
    the (start, end) of the second (None where the rollout has no complete one).
    """
    o1: int | None  # end of the first attempt's answer; None: no complete first answer
    o2: tuple[int, int] | None  # (start, end) of the second attempt; None: none, or incomplete
    corrects: bool  # the rollout holds ``</self-correction>``: a correction sequence


def split_attempts(text: str, response_format: ResponseFormat) -> Attempts:
    """Where ``text``'s attempts lie (§2.4): o1 before the first ``<self-correction>`` (the whole text
    without one), o2 after the last ``</self-correction>``; each only when it holds a complete answer.
    """
    opening = text.find(SC_OPEN)
    first = text if opening < 0 else text[:opening]
    o1 = response_format.answer_end(first)
    closing = text.rfind(SC_CLOSE)
    o2 = None
    if opening >= 0 and closing >= 0:
        start = closing + len(SC_CLOSE)
        start += len(text[start:]) - len(text[start:].lstrip())
        if (end := response_format.answer_end(text[start:])) is not None:
            o2 = (start, start + end)
    return Attempts(o1, o2, closing >= 0)


def has_answer(text: str, response_format: ResponseFormat) -> bool:
    """Whether ``text`` holds a complete, non-empty answer in ``response_format``."""
    end = response_format.answer_end(text)
    return end is not None and answer_part(text[:end]) != ""


def reward(text: str, gold: str, answer_type: str | None, response_format: ResponseFormat,
           caps: bool = False) -> float:
    """R (Eqs. 3, 6): split at the first ``</self-correction>``; R = 0.9·r′(c(o1), c(o2)) + 0.1·min(f(o1),
    f(o2)). ``caps``: the released code's caps (o1 = o2 → r′ ≤ 0.5; o1 without an answer → r′ ≤ 0; f(o2) = 0
    → r′ ≤ 0.5). A sequence without the tag: R = 0.9·(c − 0.5) + 0.1·f (the code's; the paper is silent).
    """
    close = text.find(SC_CLOSE)
    if close < 0:
        right = is_correct(text, gold, answer_type)
        return ACCURACY_WEIGHT * (float(right) - 0.5) + FORMAT_WEIGHT * float(response_format.well_formed(text))
    opening = text.find(SC_OPEN)
    o1, o2 = text[:opening if 0 <= opening < close else close], text[close + len(SC_CLOSE):]
    o1, o2 = o1.strip(), o2.strip()
    shaped = SHAPED_REWARD[(is_correct(o1, gold, answer_type), is_correct(o2, gold, answer_type))]
    well_formed = (response_format.well_formed(o1), response_format.well_formed(o2))
    if caps:
        if o1 == o2:
            shaped = min(shaped, 0.5)
        if not has_answer(o1, response_format):
            shaped = min(shaped, 0.0)
        if not well_formed[1]:
            shaped = min(shaped, 0.5)
    return ACCURACY_WEIGHT * shaped + FORMAT_WEIGHT * float(min(well_formed))


@dataclass(frozen=True)
class Pair:
    """A recombined sequence: the first attempt of rollout ``first``, SEP, the second of rollout ``second``."""
    first: int
    second: int
    kind: str  # one of PAIR_CLASSES


def pair_pool(first_right: Sequence[bool | None], second_right: Sequence[bool | None],
              include_same: bool) -> list[Pair]:
    """Every (i, j) with a complete o1 of rollout i and a complete o2 of rollout j (None: none), by class;
    ``include_same``: i = j too (the released code; Alg. 1 skips it).
    """
    pool = []
    for i, c1 in enumerate(first_right):
        for j, c2 in enumerate(second_right):
            if c1 is None or c2 is None or (i == j and not include_same):
                continue
            pool.append(Pair(i, j, ("c" if c1 else "w") + ("c" if c2 else "w")))
    return pool


def select_pairs(pool: Sequence[Pair], final_right: Sequence[bool], rule: str, rng: random.Random) -> list[Pair]:
    """The n = len(final_right) pairs that fill the group (§2.4); fewer when the pool is short (the caller
    fills those rows with copies of the originals, as the code does).

    - ``paper`` (Alg. 1): N/2 − n_c positives (w→c first, then c→c), the rest negatives at random from
      c→w ∪ w→w; where a kind runs short, the rest of the pool at random.
    - ``code`` (the release): h = ⌊(n − k)/2⌋ random w→c, then up to h random c→c; then one c→w, the w→w,
      the other c→w, the leftover w→c and c→c.
    - ``random``: n pairs at random, whatever their class (the ablation); ``none``: no pairs.
    """
    if rule not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {rule!r}")
    n = len(final_right)
    by_kind = {kind: [p for p in pool if p.kind == kind] for kind in PAIR_CLASSES}
    for pairs in by_kind.values():
        rng.shuffle(pairs)
    if rule == "none":
        return []
    if rule == "random":
        return rng.sample(list(pool), min(n, len(pool)))
    if rule == "paper":
        positives = max(0, min(n, n - sum(final_right)))  # N/2 − n_c with N = 2n
        chosen = (by_kind["wc"] + by_kind["cc"])[:positives]
        negatives = by_kind["cw"] + by_kind["ww"]
        rng.shuffle(negatives)
        chosen += negatives[:n - len(chosen)]
    else:
        h = (n - sum(final_right)) // 2
        chosen = by_kind["wc"][:h] + by_kind["cc"][:h]
        cw, ww = by_kind["cw"], by_kind["ww"]
        chosen += (cw[:1] + ww + cw[1:] + by_kind["wc"][h:] + by_kind["cc"][h:])[:n - len(chosen)]
    leftover = [p for p in pool if p not in chosen]
    rng.shuffle(leftover)
    return chosen + leftover[:n - len(chosen)]


def masked_attempt(kind: str | None, mask: str) -> bool:
    """Whether a correction sequence of class ``kind`` has ``o1 ⊕ SEP`` masked from the policy loss (§2.6):
    ``every`` (Stage I) masks all, ``changed`` (Stage II) where c(o1) ≠ c(o2), ``none`` nothing; a sequence
    without the tag (``kind`` None) is never masked.
    """
    if mask not in MASKS:
        raise ValueError(f"mask must be one of {MASKS}, got {mask!r}")
    if kind is None or mask == "none":
        return False
    return mask == "every" or kind in ("wc", "cw")
