"""Batched generation with the KV cache, optionally continuing an assistant turn from a prefix.

The authors' scripts call ``generate`` once per sample; here a batch of prompts (left-padded) goes
through one ``generate`` call. Generation stops after ``</CONCLUSION>`` (spec §1, Stage II). A
prompt is one user turn (the image, then the text) or a whole conversation in the chat format of
:mod:`sherlock.chat` (SCL's second turn answers with the first answer in the history).

A correction round asks in one of two ways (:data:`sherlock.prompts.CORRECTIONS`): ``prompt``, Sherlock's and
SCL's, a new turn R(Q, previous response); ``continue``, Octopus's, the question with the trigger instruction
answered as ``o1 ⊕ SEP ⊕ o2 ⊕ SEP ⊕ …``, round k continuing the response so far after an appended SEP (octopus-spec §3:
the one trained round, then test-time rounds by appending the tag).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable

import torch
from PIL import Image
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from sherlock import distributed
from sherlock.chat import Context, chat_prompt, user_turn
from sherlock.decoding import DecodingConfig
from sherlock.octopus import FORMATS, trigger_prompt
from sherlock.prompts import correction_prompt
from sherlock.protocol import Protocol
from sherlock.reasoning import CONCLUSION_END, SC_OPEN, SEP, cut_attempt


def item_seed(seed: int, stream: str, key: str) -> int:
    """The seed of one item's random stream: a hash of the stage seed, the stream name and the item."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{stream}/{key}".encode()).digest()[:8], "big") >> 1


class PerItemSampler(LogitsProcessor):
    """Temperature + top-p sampling where row ``k`` draws from its own ``torch.Generator``.

    ``generate`` samples a batch from one global stream, so a draw depends on the batch it lands
    in and on every call before it. Here each row's token is drawn (one uniform per step, inverse
    CDF) from a generator seeded by :func:`item_seed`, and returned as the only finite logit, for
    greedy search to pick. An item's draws are the same in any batch, on any rank.
    """

    def __init__(self, seeds: list[int], temperature: float, top_p: float):
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.warpers = [TemperatureLogitsWarper(temperature)] + ([TopPLogitsWarper(top_p)] if top_p < 1 else [])

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Scores with one finite logit per row: the token drawn from the row's own generator."""
        for warper in self.warpers:
            scores = warper(input_ids, scores)
        cumulative = torch.softmax(scores.float(), dim=-1).cumsum(dim=-1).cpu()
        uniforms = torch.cat([torch.rand(1, generator=g) for g in self.generators])
        tokens = torch.searchsorted(cumulative, (uniforms * cumulative[:, -1]).unsqueeze(1)).clamp(
            max=scores.shape[-1] - 1)
        chosen = torch.full_like(scores, float("-inf"))
        return chosen.scatter_(1, tokens.to(scores.device), 0.0)


class Abandoned(StoppingCriteria):
    """Ends a generate call early once ``abandoned()`` is true (e.g. every caller of a served batch left)."""

    def __init__(self, abandoned: Callable[[], bool]):
        self.abandoned = abandoned

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        """True for every row once ``abandoned()`` is."""
        return torch.full((input_ids.shape[0],), self.abandoned(), dtype=torch.bool, device=input_ids.device)


def prompt_text(processor, prompt: str | list[dict], prefix: str, num_images: int) -> str:
    """The text a response is generated after: the chat-templated prompt (one user turn holding
    ``num_images`` images, or a conversation), then the assistant's ``prefix``.
    """
    messages = prompt if isinstance(prompt, list) else [user_turn(prompt, num_images)]
    return processor.apply_chat_template(messages, add_generation_prompt=True) + prefix


def generate(
    model,
    processor,
    prompts: list[str | list[dict]],
    images: list[Image.Image | list[Image.Image]],
    prefixes: list[str] | None = None,
    config: DecodingConfig | None = None,
    desc: str = "generating",
    stream: str = "",
    keys: list[str] | None = None,
    abandoned: Callable[[], bool] | None = None,
    one_attempt: bool = False,
) -> list[str]:
    """Generate one response per (prompt, image); with ``prefixes``, continue each assistant turn.

    A ``str`` prompt is a single user turn holding the image — or the images, when ``images[k]`` is
    a list (MMMU); a list is a conversation (messages) whose image placeholders ``images[k]`` fills.
    Sampling draws item ``k`` from its own stream, seeded by ``config.seed``, ``stream`` (name every
    round, turn and stage differently) and ``keys[k]`` (the item's id; its position when ``keys``
    is None).

    Under torchrun the batches are shared out over the ranks (:func:`sherlock.distributed.map_batches`):
    every rank returns all the outputs, the same as one rank would.

    With ``config.engine == "vllm"``, ``model`` is a :class:`sherlock.models.engines.VLLMModel` and
    vLLM generates every item from the same prompt text (:func:`prompt_text`) with the item's seed.

    Returns the generated continuations only (the prefix is not repeated), cut after the first
    ``</CONCLUSION>`` (``one_attempt``: also before a ``<self-correction>``, the end of an Octopus attempt);
    cut short when ``abandoned()`` turns true (:class:`Abandoned`).
    """
    config = config or DecodingConfig()
    prefixes = prefixes if prefixes is not None else [""] * len(prompts)
    keys = keys if keys is not None else [str(k) for k in range(len(prompts))]
    if not len(prompts) == len(images) == len(prefixes) == len(keys):
        raise ValueError(f"got {len(prompts)} prompts, {len(images)} images, {len(prefixes)} prefixes "
                         f"and {len(keys)} keys")
    images = [[image] if isinstance(image, Image.Image) else list(image) for image in images]
    if config.engine == "vllm":
        from sherlock.models.engines import vllm_generate

        texts = [prompt_text(processor, prompt, prefix, len(shown)) for prompt, prefix, shown in
                 zip(prompts, prefixes, images)]
        return vllm_generate(model, texts, images, config.max_new_tokens, config.temperature, config.top_p,
                             [item_seed(config.seed, stream, key) for key in keys], one_attempt)
    tokenizer = processor.tokenizer
    tokenizer.padding_side = "left"
    sampling = config.temperature > 0
    options = {
        "max_new_tokens": config.max_new_tokens,
        "do_sample": False,
        "stop_strings": [CONCLUSION_END, SC_OPEN] if one_attempt else [CONCLUSION_END],
        "tokenizer": tokenizer,
        "pad_token_id": tokenizer.pad_token_id,
        "stopping_criteria": StoppingCriteriaList([Abandoned(abandoned)]) if abandoned else None,
    }
    was_training = model.training
    model.eval()

    def generate_batch(start: int) -> list[str]:
        stop = start + config.batch_size
        texts = [prompt_text(processor, prompt, prefix, len(shown))
                 for prompt, prefix, shown in zip(prompts[start:stop], prefixes[start:stop], images[start:stop])]
        batch = processor(images=images[start:stop], text=texts, padding=True, return_tensors="pt").to(model.device)
        sampler = LogitsProcessorList([PerItemSampler(
            [item_seed(config.seed, stream, key) for key in keys[start:stop]], config.temperature, config.top_p)]
        ) if sampling else None
        with torch.inference_mode():
            tokens = model.generate(**batch, **options, logits_processor=sampler)
        new_tokens = tokens[:, batch["input_ids"].shape[1] :]
        return [cut_attempt(t, one_attempt) for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]

    # under torchrun: the batches shared out over the ranks
    outputs = distributed.map_batches(range(0, len(prompts), config.batch_size), generate_batch, desc)
    model.train(was_training)
    return outputs


def self_correct(model, processor, questions: list[str], images, first: list[str], rounds: int, decoding,
                 desc: str = "self-correction", keys: list[str] | None = None,
                 abandoned: Callable[[], bool] | None = None, contexts: list[Context] | None = None) -> list[list[str]]:
    """Responses of ``rounds`` correction rounds, each prompted with R(Q, previous response) (after
    the question's earlier turns, ``contexts``).

    Round k samples from the stream ``correction round k`` (independent of the direct answer's).
    """
    contexts = contexts or [()] * len(questions)
    history = [first]
    for round_number in range(1, rounds + 1):
        prompts = [chat_prompt(correction_prompt(q, previous), context)
                   for q, previous, context in zip(questions, history[-1], contexts, strict=True)]
        history.append(generate(model, processor, prompts, images, config=decoding, desc=f"{desc} {round_number}",
                                stream=f"correction round {round_number}", keys=keys, abandoned=abandoned))
    return history[1:]


def answer_with_corrections(model, processor, questions: list[str], images, rounds: int, direct: DecodingConfig,
                            desc: str = "answer", keys: list[str] | None = None,
                            abandoned: Callable[[], bool] | None = None,
                            contexts: list[Context] | None = None) -> list[list[str]]:
    """Responses of round 0 (``direct`` decoding) and of ``rounds`` greedy correction rounds, round-major;
    each question after its earlier turns (``contexts``), where given.
    """
    contexts = contexts or [()] * len(questions)
    first = generate(model, processor, [chat_prompt(q, c) for q, c in zip(questions, contexts, strict=True)], images,
                     config=direct, desc=f"{desc} direct", stream="direct", keys=keys, abandoned=abandoned)
    greedy = dataclasses.replace(direct, temperature=0.0, top_p=1.0)
    return [first] + self_correct(model, processor, questions, images, first, rounds, greedy, desc=f"{desc} round",
                                  keys=keys, abandoned=abandoned, contexts=contexts)


def trigger_prompts(questions: list[str], response_format: str, contexts: list[Context] | None = None) -> list:
    """Each question with Octopus's trigger instruction (octopus-spec §2.2), after its earlier turns."""
    contexts = contexts or [()] * len(questions)
    return [chat_prompt(trigger_prompt(q, FORMATS[response_format]), c)
            for q, c in zip(questions, contexts, strict=True)]


def answer_continuing(model, processor, prompts: list, images, rounds: int, direct: DecodingConfig,
                      desc: str = "answer", keys: list[str] | None = None,
                      abandoned: Callable[[], bool] | None = None) -> list[list[str]]:
    """Octopus's attempts, round-major: round 0 is o1 (``direct`` decoding) of the prompts (each question with
    the trigger instruction: :func:`trigger_prompts`), round k ≥ 1 the attempt o_{k+1} written greedily after
    the response so far and an appended SEP (the model's own decision to correct is not waited for: every round
    corrects, as a ``prompt`` round does). Each attempt ends at its answer or before a further
    ``<self-correction>``.
    """
    history = [generate(model, processor, prompts, images, config=direct, desc=f"{desc} direct", stream="direct",
                        keys=keys, abandoned=abandoned, one_attempt=True)]
    greedy = dataclasses.replace(direct, temperature=0.0, top_p=1.0)
    so_far = history[0]
    for round_number in range(1, rounds + 1):
        prefixes = [text + SEP for text in so_far]
        history.append(generate(model, processor, prompts, images, prefixes=prefixes, config=greedy,
                                desc=f"{desc} round {round_number}", stream=f"correction round {round_number}",
                                keys=keys, abandoned=abandoned, one_attempt=True))
        so_far = [prefix + attempt for prefix, attempt in zip(prefixes, history[-1], strict=True)]
    return history


def answer_as_trained(model, processor, questions: list[str], images, rounds: int, direct: DecodingConfig,
                      protocol: Protocol, desc: str = "answer", keys: list[str] | None = None,
                      abandoned: Callable[[], bool] | None = None) -> list[list[str]]:
    """The direct answer and ``rounds`` corrections, round-major, asked as the checkpoint's ``protocol`` says
    (:mod:`sherlock.protocol`): :func:`answer_continuing` on the trigger prompts, else
    :func:`answer_with_corrections`.
    """
    if protocol.correction == "continue":
        return answer_continuing(model, processor, trigger_prompts(questions, protocol.response_format), images,
                                 rounds, direct, desc=desc, keys=keys, abandoned=abandoned)
    return answer_with_corrections(model, processor, questions, images, rounds, direct, desc=desc, keys=keys,
                                   abandoned=abandoned)
