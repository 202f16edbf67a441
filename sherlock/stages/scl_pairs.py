"""SCL data (SELFCORSET, spec §2): two-turn self-correction, then pairs typed by correctness.

Turn 1 asks the question with the step-by-step request and the ``## X ##`` answer format
(``first_turn="scl"``), or the question alone as the model was fine-tuned on it
(``first_turn="question"``: the embedded tiny model answers the SCL instructions with noise); turn 2,
in the same chat with the first answer in the history, asks for a review (one of the four SCL
review prompts). The initial and refined answers are judged against the gold answer:

====  ==========  ==============================================
type  (init, ref)  pair
====  ==========  ==============================================
1     (+, +)      dropped
2     (−, +)      chosen = refined, rejected = initial
3     (+, −)      chosen = initial, rejected = refined
4     (−, −)      dropped
====  ==========  ==============================================

As in the authors' ``data_construction.py``, a pair's prompt is the question alone (without the
turn instructions): the preference step trains x → y_w against x → y_l with standard DPO. A pair
is stored as a Sherlock pair without a shared prefix (truncation step 1) or visual noise (ε = 0),
whose β weight w(1, 0) is exactly 1.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from sherlock import distributed
from sherlock.answers import is_correct, options_in
from sherlock.chat import Context, assistant_turn, chat_prompt, follow_up_turn, prompt_turns
from sherlock.config import ConfigError, help_field
from sherlock.data.llava_cot import load_data
from sherlock.data.preferences import PreferencePair
from sherlock.data.schema import Record, open_image, write_jsonl
from sherlock.decoding import SamplingSettings
from sherlock.prompts import SCL_DEFAULT_REVIEW_PROMPT, SCL_REVIEW_PROMPTS, scl_first_turn, scl_review_turn
from sherlock.reasoning import conclusion_text
from sherlock.stages.build_preferences import save_pairs
from sherlock.stages.io import record_stage_config
from sherlock.stages.registry import STAGES

RESPONSES_FILE = STAGES["scl-pairs"].outputs["responses"]
# The authors' extractor, in order (spec §2); the second pattern already covers the third.
SCL_ANSWER_PATTERNS = (re.compile(r"##\s*([ABCD])\s*##"), re.compile(r"##(.*?)##"), re.compile(r"##\s*([0-3])\s*##"))
SCL_LETTER_FALLBACK = re.compile(r"([ABCD])\.")
# (initial correct, refined correct) -> SCL type
SCL_TYPES = {(True, True): 1, (False, True): 2, (True, False): 3, (False, False): 4}
KEPT_TYPES = (2, 3)
FIRST_TURNS = ("scl", "question")


def scl_answer(response: str, answer_type: str) -> str | None:
    r"""The answer of an SCL response: the ``## X ##`` patterns first (spec §2, in order).

    Without them, the CONCLUSION block (this project's response format), then, for option
    letters, the authors' fallback ``([ABCD])\.``.
    """
    for pattern in SCL_ANSWER_PATTERNS:
        if match := pattern.search(response):
            return match.group(1).strip()
    if (conclusion := conclusion_text(response)) is not None:
        return conclusion
    if answer_type == "choice" and (match := SCL_LETTER_FALLBACK.search(response)):
        return match.group(1)
    return None


def scl_correct(response: str, record: Record) -> bool:
    """Whether the response's extracted answer matches the record's gold answer (rule-based)."""
    answer = scl_answer(response, record.answer_type or "text")
    return answer is not None and is_correct(answer, record.answer, record.answer_type, options_in(record.question))


def scl_type(initial_correct: bool, refined_correct: bool) -> int:
    """SELFCORSET type 1–4 of an (initial, refined) outcome."""
    return SCL_TYPES[(initial_correct, refined_correct)]


def scl_pair(record: Record, initial: str, refined: str, kind: int) -> PreferencePair | None:
    """The preference pair of a type-2 or type-3 outcome; ``None`` for types 1 and 4 (dropped)."""
    if kind not in KEPT_TYPES:
        return None
    chosen, rejected = (refined, initial) if kind == 2 else (initial, refined)
    return PreferencePair(record.id, record.image, record.question, "", chosen, "", rejected,
                          truncation_step=1, noise_level=0.0, perturbation=f"scl_type_{kind}", context=record.context)


def review_conversations(first_turns: list[str], initial: list[str], review_prompt: int,
                         contexts: list[Context]) -> list[list[dict]]:
    """Turn 2 of every chat: [turn 1 (image + text, after the question's earlier turns), the initial
    answer, the review request].
    """
    review = follow_up_turn(scl_review_turn(review_prompt))
    return [[*prompt_turns(first, context), assistant_turn(answer), review]
            for first, answer, context in zip(first_turns, initial, contexts, strict=True)]


@dataclass(kw_only=True)
class SCLPairsConfig(SamplingSettings):
    """Config of ``sherlock scl-pairs``."""
    model: str = help_field(help="instruction-following checkpoint that answers and reviews", uri="model")
    data: str = help_field(help="labelled data set directory or jsonl (gold answers judge both turns)", uri="data")
    output: str = help_field(help="directory for pairs.jsonl, responses.jsonl, stats.json and the images",
                             uri="output")
    review_prompt: int = help_field(SCL_DEFAULT_REVIEW_PROMPT, "SCL review prompt 0-3 (authors' default 2)")
    first_turn: str = help_field("scl", "scl (question + SCL instructions, as published) or question (alone)")
    seed: int = help_field(0, "sampling seed")

    def check(self) -> None:
        """Refuse bad settings before a model is loaded."""
        if not 0 <= self.review_prompt < len(SCL_REVIEW_PROMPTS):
            raise ConfigError(f"review_prompt must be in 0..{len(SCL_REVIEW_PROMPTS) - 1}, got {self.review_prompt}")
        if self.first_turn not in FIRST_TURNS:
            raise ConfigError(f"first_turn must be one of {FIRST_TURNS}, got {self.first_turn!r}")


def run_scl_pairs(config: SCLPairsConfig) -> Path:
    """Answer, review, type and pair every record; returns the path of ``pairs.jsonl``.

    Every response with its correctness and type goes to ``responses.jsonl``; the type counts go
    to ``stats.json``. No type-2/3 outcome at all is an error (nothing to train on).
    """
    from sherlock.generation import generate
    from sherlock.models.engines import load_generator

    config.check()
    data = load_data(config.data)
    unlabelled = [r.id for r in data.records if r.answer is None]
    if unlabelled:
        raise ValueError(f"{len(unlabelled)} records of {config.data} have no gold answer (first: {unlabelled[0]}); "
                         "SCL types need the correctness of both turns")
    model, processor = load_generator(config.model, config.engine, distributed.device(), config.image_budget())
    images = [open_image(data.image_root, r) for r in data.records]
    decoding = config.decoding(config.seed)
    first_turns = [scl_first_turn(r.question) if config.first_turn == "scl" else r.question for r in data.records]
    keys = [r.id for r in data.records]
    contexts = [r.context for r in data.records]
    initial = generate(model, processor, [chat_prompt(first, c) for first, c in zip(first_turns, contexts)], images,
                       config=decoding, desc="SCL turn 1", stream="SCL turn 1", keys=keys)
    refined = generate(model, processor, review_conversations(first_turns, initial, config.review_prompt, contexts),
                       images, config=decoding, desc="SCL turn 2 (review)", stream="SCL turn 2", keys=keys)
    rows, pairs = [], []
    for record, first, second in zip(data.records, initial, refined, strict=True):
        outcome = scl_correct(first, record), scl_correct(second, record)
        kind = scl_type(*outcome)
        rows.append({"id": record.id, "initial": first, "refined": second, "initial_correct": outcome[0],
                     "refined_correct": outcome[1], "type": kind})
        if (pair := scl_pair(record, first, second, kind)) is not None:
            pairs.append(pair)
    record_stage_config(config, config.output)
    if distributed.is_main():
        write_jsonl(rows, Path(config.output) / RESPONSES_FILE)
    types = Counter(row["type"] for row in rows)
    stats = {f"type_{k}": types.get(k, 0) for k in SCL_TYPES.values()} | {
             "review_prompt": config.review_prompt, "first_turn": config.first_turn,
             "initial_accuracy": sum(r["initial_correct"] for r in rows) / len(rows),
             "refined_accuracy": sum(r["refined_correct"] for r in rows) / len(rows)}
    return save_pairs(pairs, data.image_root, config.output, stats)
