"""Batched generation with the KV cache, optionally continuing an assistant turn from a prefix.

The authors' scripts call ``generate`` once per sample; here a batch of prompts (left-padded) goes
through one ``generate`` call. Generation stops after ``</CONCLUSION>`` (spec §1, Stage II). A
prompt is one user turn (the image, then the text) or a whole conversation in the chat format of
:mod:`sherlock.chat` (SCL's second turn answers with the first answer in the history).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from PIL import Image
from tqdm.auto import tqdm

from sherlock.chat import user_turn
from sherlock.prompts import correction_prompt
from sherlock.reasoning import CONCLUSION_END, cut_after_conclusion


@dataclass
class DecodingConfig:
    """Decoding settings. ``temperature = 0`` is greedy decoding."""

    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    batch_size: int = 32
    seed: int = 0


def generate(
    model,
    processor,
    prompts: list[str | list[dict]],
    images: list[Image.Image],
    prefixes: list[str] | None = None,
    config: DecodingConfig | None = None,
    desc: str = "generating",
) -> list[str]:
    """Generate one response per (prompt, image); with ``prefixes``, continue each assistant turn.

    A ``str`` prompt is a single user turn holding the image; a list is a conversation (messages)
    whose one image is ``images[k]``.

    Returns the generated continuations only (the prefix is not repeated), cut after the first
    ``</CONCLUSION>``.
    """
    config = config or DecodingConfig()
    prefixes = prefixes if prefixes is not None else [""] * len(prompts)
    if not len(prompts) == len(images) == len(prefixes):
        raise ValueError(f"got {len(prompts)} prompts, {len(images)} images and {len(prefixes)} prefixes")
    tokenizer = processor.tokenizer
    tokenizer.padding_side = "left"
    sampling = config.temperature > 0
    options = {
        "max_new_tokens": config.max_new_tokens,
        "do_sample": sampling,
        "stop_strings": [CONCLUSION_END],
        "tokenizer": tokenizer,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if sampling:
        options.update(temperature=config.temperature, top_p=config.top_p)
    torch.manual_seed(config.seed)
    outputs: list[str] = []
    was_training = model.training
    model.eval()
    for start in tqdm(range(0, len(prompts), config.batch_size), desc=desc, unit=" batches"):
        stop = start + config.batch_size
        texts = [
            processor.apply_chat_template(prompt if isinstance(prompt, list) else [user_turn(prompt)],
                                          add_generation_prompt=True) + prefix
            for prompt, prefix in zip(prompts[start:stop], prefixes[start:stop])
        ]
        batch = processor(
            images=[[image] for image in images[start:stop]], text=texts, padding=True, return_tensors="pt"
        ).to(model.device)
        with torch.inference_mode():
            tokens = model.generate(**batch, **options)
        new_tokens = tokens[:, batch["input_ids"].shape[1] :]
        outputs.extend(cut_after_conclusion(t) for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    model.train(was_training)
    return outputs


def self_correct(model, processor, questions: list[str], images, first: list[str], rounds: int, decoding,
                 desc: str = "self-correction") -> list[list[str]]:
    """Responses of ``rounds`` correction rounds, each prompted with R(Q, previous response)."""
    history = [first]
    for round_number in range(1, rounds + 1):
        prompts = [correction_prompt(q, previous) for q, previous in zip(questions, history[-1])]
        history.append(generate(model, processor, prompts, images, config=decoding, desc=f"{desc} {round_number}"))
    return history[1:]


def answer_with_corrections(model, processor, questions: list[str], images, rounds: int, direct: DecodingConfig,
                            desc: str = "answer") -> list[list[str]]:
    """Responses of round 0 (``direct`` decoding) and of ``rounds`` greedy correction rounds, round-major."""
    first = generate(model, processor, questions, images, config=direct, desc=f"{desc} direct")
    greedy = dataclasses.replace(direct, temperature=0.0, top_p=1.0)
    return [first] + self_correct(model, processor, questions, images, first, rounds, greedy, desc=f"{desc} round")
