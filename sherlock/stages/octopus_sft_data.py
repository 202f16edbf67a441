"""Octopus's cold-start data (octopus-spec §2.1, §7): the model's own first attempt o1, a gold-conditioned o2.

The model (R0: it already answers) samples ``samples`` answers per item with the plain prompt (the question, and in
``think-boxed`` the format's answer instruction; paper: 4 at T 0.6, top_p 0.9); each is judged against the gold
answer by the one extractor, and a sample not in the response format counts for neither kind. An item whose samples
were all right gives a c→c example (o1 one of them at random), an item with a wrong sample a w→c example (o1 a
wrong one at random). The two kinds are mixed w→c : c→c = ``wc_share`` : 1 − ``wc_share`` (paper 6 : 4) at the
largest size both allow.

o2 is, by default, the item's gold response (in ``think-boxed``: its first three stages thought, its short answer
boxed): at the embedded scale the task's gold rationale stands in for the rewrite by a stronger model (octopus-spec
§7), so o2 is always right and items whose samples were all wrong give w→c examples too. With ``rewrite``, o2 is the
paper's mixed sampling (§2.1, App. A.3): ``rewriter`` (default the sampling model itself, as the released code's
default) writes a new answer from the question, the ground truth and o1 as the reference (T ``rewrite_temperature``,
top_p 1); a rewrite that is not in the format or not right is replaced by the gold attempt and counted
(``stats.json``: ``o2_rewritten``, ``o2_gold``), so every o2 stays right.

Each example is the question with the trigger instruction (§2.2) and the response ``o1 ⊕ SEP ⊕ o2``: the
``sft`` stage trains on it as on any data set. Writes ``data.jsonl`` + images and ``stats.json``.
"""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass
from pathlib import Path

from sherlock import distributed
from sherlock.answers import is_correct, options_in
from sherlock.config import ConfigError, help_field
from sherlock.data.llava_cot import DATA_FILE, load_data, write_llava_cot
from sherlock.data.sampling import link_or_copy
from sherlock.data.schema import open_image
from sherlock.decoding import SamplingSettings
from sherlock.octopus import FORMATS, answer_prompt, rewrite_prompt, trigger_prompt
from sherlock.protocol import Protocol, write_protocol
from sherlock.reasoning import SEP
from sherlock.stages.io import record_stage_config
from sherlock.stages.registry import STAGES

STATS_FILE = STAGES["octopus-sft-data"].outputs["stats"]


@dataclass(kw_only=True)
class OctopusSFTDataConfig(SamplingSettings):
    """Config of ``sherlock octopus-sft-data``."""
    model: str = help_field(help="the model whose own answers are o1 (R0)", uri="model")
    data: str = help_field(help="labelled data set with gold responses (D_B)", uri="data")
    output: str = help_field(help="data set directory: data.jsonl (o1 ⊕ SEP ⊕ o2 responses) + images",
                             uri="output")
    samples: int = help_field(4, "answers sampled per item (paper 4)")
    temperature: float = help_field(0.6, "sampling temperature (paper 0.6)")
    top_p: float = help_field(0.9, "nucleus sampling threshold (paper 0.9)")
    wc_share: float = help_field(0.6, "share of w→c examples; the rest c→c (paper 6k : 4k)")
    response_format: str = help_field("stages", f"how an attempt is written {tuple(FORMATS)}")
    rewrite: bool = help_field(False, "o2 rewritten by a model from the question, the gold answer and o1 (the paper's "
                                      "mixed sampling); false: the gold response")
    rewriter: str | None = help_field(None, "the model that rewrites o2 (default: --model itself, the released "
                                            "code's default; the paper: a stronger one)", uri="model")
    rewrite_temperature: float = help_field(0.7, "sampling temperature of the rewrite (paper 0.7)")
    seed: int = help_field(0, "seed of the sampling and the draws")

    def check(self) -> None:
        """Refuse settings that cannot give a mix."""
        if self.samples < 1:
            raise ConfigError("samples must be >= 1")
        if not 0.0 < self.wc_share < 1.0:
            raise ConfigError(f"wc_share must be in (0, 1), got {self.wc_share}")
        if self.rewriter and not self.rewrite:
            raise ConfigError("rewriter is set but rewrite is false: nothing would be rewritten")
        if self.response_format not in FORMATS:
            raise ConfigError(f"response_format must be one of {tuple(FORMATS)}, got {self.response_format!r}")


def mix(wrong: list, right: list, wc_share: float, rng: random.Random) -> tuple[list, list]:
    """The largest draw of ``wrong`` and ``right`` examples in the ratio wc_share : 1 − wc_share."""
    total = int(min(len(wrong) / wc_share, len(right) / (1 - wc_share)))
    n_wrong = min(len(wrong), round(total * wc_share))
    n_right = min(len(right), total - n_wrong)
    return rng.sample(wrong, n_wrong), rng.sample(right, n_right)


def run_octopus_sft_data(config: OctopusSFTDataConfig) -> Path:
    """Sample, judge, mix and write the cold-start set; ``stats.json`` holds the counts and sample accuracy."""
    from sherlock.chat import chat_prompt
    from sherlock.generation import generate
    from sherlock.models.engines import load_generator

    config.check()
    data = load_data(config.data)
    records = [r for r in data.records if r.answer and not r.context]
    if not records:
        raise ConfigError(f"{config.data} has no single-turn record with a gold answer")
    model, processor = load_generator(config.model, config.engine, distributed.device(), config.image_budget())
    images = [open_image(data.image_root, r) for r in records]
    fmt = FORMATS[config.response_format]
    prompts = [chat_prompt(answer_prompt(r.question, fmt), ()) for r in records]
    draws = [generate(model, processor, prompts, images, config=config.decoding(config.seed),
                      desc=f"o1 sample {k + 1}", stream=f"octopus o1 {k}", keys=[r.id for r in records])
             for k in range(config.samples)]
    def judged_right(record, text: str) -> bool:  # the one extractor against the gold answer (§2.1 Step 2)
        return is_correct(text, record.answer, record.answer_type, options_in(record.question))

    rng = random.Random(config.seed)
    wrong, right, malformed = [], [], 0
    for index, record in enumerate(records):
        answers = [draw[index] for draw in draws]
        formed = [a for a in answers if fmt.well_formed(a)]  # the judge's format check (§2.1)
        malformed += len(answers) - len(formed)
        verdicts = [judged_right(record, a) for a in formed]
        if formed and all(verdicts) and len(formed) == len(answers):
            right.append((record, rng.choice(formed)))
        elif not all(verdicts):
            wrong.append((record, rng.choice([a for a, ok in zip(formed, verdicts) if not ok])))
    chosen_wrong, chosen_right = mix(wrong, right, config.wc_share, rng)
    chosen = [(kind, record, o1) for kind, pairs in (("wc", chosen_wrong), ("cc", chosen_right))
              for record, o1 in pairs]
    second = [fmt.gold_attempt(record.response, record.answer) for _, record, _ in chosen]
    rewritten = 0
    if config.rewrite and chosen:
        if config.rewriter and config.rewriter != config.model:
            del model
            model, processor = load_generator(config.rewriter, config.engine, distributed.device(),
                                              config.image_budget())
        image_of = {record.id: image for record, image in zip(records, images, strict=True)}
        drafts = generate(model, processor,
                          [chat_prompt(rewrite_prompt(r.question, r.answer, o1, fmt), ()) for _, r, o1 in chosen],
                          [image_of[r.id] for _, r, _ in chosen], desc="o2 rewrite", stream="octopus rewrite",
                          config=dataclasses.replace(config.decoding(config.seed),
                                                     temperature=config.rewrite_temperature, top_p=1.0),
                          keys=[r.id for _, r, _ in chosen])
        for k, (draft, (_, record, _)) in enumerate(zip(drafts, chosen, strict=True)):
            if fmt.well_formed(draft) and judged_right(record, draft):
                second[k], rewritten = draft.strip(), rewritten + 1
    examples = [dataclasses.replace(record, id=f"{record.id}/{kind}", question=trigger_prompt(record.question, fmt),
                                    response=f"{o1.strip()}{SEP}{o2}")
                for (kind, record, o1), o2 in zip(chosen, second, strict=True)]
    rng.shuffle(examples)
    stats = {"items": len(records), "samples_per_item": config.samples,
             "sample_accuracy": sum(judged_right(r, d[i]) for d in draws for i, r in enumerate(records))
                                / (len(records) * len(draws)),
             "malformed_samples": malformed, "all_right_items": len(right), "items_with_a_wrong_sample": len(wrong),
             "wc_examples": len(chosen_wrong), "cc_examples": len(chosen_right), "o2_rewritten": rewritten,
             "o2_gold": len(chosen) - rewritten}
    output = Path(config.output)
    if not examples:
        raise ConfigError(f"no cold-start example: {stats}")
    if distributed.is_main():
        for record in records:
            link_or_copy(data.image_root / record.image, output / record.image)
        write_llava_cot(examples, output / DATA_FILE)
        (output / STATS_FILE).write_text(json.dumps(stats, indent=2))
        write_protocol(output, Protocol("continue", config.response_format))  # the SFT model answers this way
    record_stage_config(config, output)
    return output

