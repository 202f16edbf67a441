"""The generation engines of the stages that only generate: ``hf`` (transformers' ``generate``, the
default) and ``vllm``, behind :func:`sherlock.generation.generate`.

vLLM's contract is the HF engine's: the same prompt text (the chat template, then the prefix the
response continues), every image of the item, the continuation only, cut after ``</CONCLUSION>``,
and one seed per item (:func:`sherlock.generation.item_seed`). vLLM draws its own stream from that
seed, so sampled responses differ from HF's, but not between batches or runs; greedy ones should
agree up to numerics.

vLLM is optional (a CUDA GPU), imported only here, and not an extra: no release admits the project's
torch 2.14.1 and transformers 5.23.0 yet (0.34.0 pins torch 2.14.0, transformers < 5.23). It serves the
Gemma 3, Idefics3, Qwen2.5-VL and Qwen3-VL families (Qwen's image grid is vLLM's to compute from the
images: a request carries the image placeholder once per image), and no longer Mllama: vLLM dropped its encoder-decoder
models, Mllama among them, with its V0 engine (vllm-project/vllm#24907, v0.10.2). One process drives
the engine: a step on several ranks keeps ``engine: hf``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from sherlock import distributed
from sherlock.config import ConfigError
from sherlock.models.loading import load_processor, load_vlm, require_checkpoint
from sherlock.reasoning import CONCLUSION_END, SC_OPEN, cut_attempt

ENGINES = ("hf", "vllm")
# config.json model_type; vLLM has no Mllama since #24907
VLLM_FAMILIES = ("gemma3", "idefics3", "qwen2_5_vl", "qwen3_vl")
MAX_IMAGES_PER_PROMPT = 8  # MMMU questions hold up to 7


@dataclass(frozen=True)
class VLLMModel:
    """A checkpoint loaded into a ``vllm.LLM``: what generation stages hold in place of the HF model."""

    path: Path
    llm: object


def check_vllm_checkpoint(path: str | Path) -> Path:
    """The checkpoint, if vLLM can serve it here (its family, one rank); a :class:`ConfigError` otherwise."""
    path = require_checkpoint(path)
    model_type = json.loads((path / "config.json").read_text()).get("model_type")
    if model_type not in VLLM_FAMILIES:
        raise ConfigError(f"engine vllm: {path} is a {model_type!r} checkpoint; vLLM serves {VLLM_FAMILIES} here "
                          "(it dropped Mllama in vllm-project/vllm#24907); use engine hf")
    if distributed.world_size() > 1:
        raise ConfigError("engine vllm runs in one process; run this step on one rank or with engine hf")
    return path


def load_vllm(path: str | Path) -> VLLMModel:
    """The vLLM engine on checkpoint ``path`` (the ``vllm`` extra and a CUDA GPU)."""
    path = check_vllm_checkpoint(path)
    try:
        import vllm
    except ImportError:
        raise ConfigError("engine vllm needs vLLM installed (a CUDA GPU) in a release whose pins admit "
                          "this torch and transformers (none does up to vLLM 0.34.0: pyproject.toml)") from None
    return VLLMModel(path, vllm.LLM(model=str(path), seed=0, limit_mm_per_prompt={"image": MAX_IMAGES_PER_PROMPT}))


def load_generator(path: str | Path, engine: str = "hf", device: str | None = None,
                   image_budget: dict[str, int] | None = None):
    """``(model, processor)`` for a stage that only generates: the HF model (float32) on ``device``, or
    with ``engine="vllm"`` a :class:`VLLMModel` (checked before vLLM is imported); the processor with the
    image token budget ``image_budget`` (:func:`sherlock.models.loading.load_processor`).
    """
    if engine not in ENGINES:
        raise ConfigError(f"engine must be one of {ENGINES}, got {engine!r}")
    if engine == "vllm":
        model = load_vllm(path)
        return model, load_processor(model.path, image_budget)
    return load_vlm(path, dtype=torch.float32, device=device, image_budget=image_budget)


def vllm_requests(texts: list[str], images: list[list[Image.Image]], max_new_tokens: int, temperature: float,
                  top_p: float, seeds: list[int], one_attempt: bool = False) -> tuple[list[dict], list[dict]]:
    """VLLM's prompts (text + ``multi_modal_data``) and the keyword arguments of each item's
    ``SamplingParams``: greedy at ``temperature`` 0 (no seed), else the item's own seed; stopping after
    ``</CONCLUSION>`` (``one_attempt``: or at a ``<self-correction>``).
    """
    sampling = temperature > 0
    stops = [CONCLUSION_END, SC_OPEN] if one_attempt else [CONCLUSION_END]
    prompts = [{"prompt": text, "multi_modal_data": {"image": list(shown)}}
               for text, shown in zip(texts, images, strict=True)]
    params = [{"max_tokens": max_new_tokens, "temperature": temperature if sampling else 0.0,
               "top_p": top_p if sampling else 1.0, "seed": seed if sampling else None, "stop": stops,
               "include_stop_str_in_output": True, "skip_special_tokens": True} for seed in seeds]
    if len(params) != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts and {len(seeds)} seeds")
    return prompts, params


def vllm_generate(model: VLLMModel, texts: list[str], images: list[list[Image.Image]], max_new_tokens: int,
                  temperature: float, top_p: float, seeds: list[int], one_attempt: bool = False) -> list[str]:
    """One continuation per item, in order, cut as :func:`sherlock.reasoning.cut_attempt` cuts."""
    from vllm import SamplingParams

    prompts, params = vllm_requests(texts, images, max_new_tokens, temperature, top_p, seeds, one_attempt)
    outputs = model.llm.generate(prompts, [SamplingParams(**p) for p in params], use_tqdm=True)
    return [cut_attempt(output.outputs[0].text, one_attempt) for output in outputs]
