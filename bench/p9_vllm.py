"""P9: vLLM against the HF engine — greedy answers to the same items on one CUDA GPU.

Needs a CUDA GPU and vLLM installed (no release admits the project's torch yet: pyproject.toml); CI has neither, and
``tests/test_engines.py`` checks the adapter's requests on CPU. A tiny Gemma 3 (vLLM no longer
serves Mllama) with a tokenizer trained on the workspace's data answers every item greedily through
:func:`sherlock.generation.generate` with each engine (``engine: hf`` and ``engine: vllm``, the same
prompt text). The metric is items per second, the ratio vLLM over HF; the details hold the fraction
of identical responses (greedy decoding: both engines should agree up to numerics).
"""

from __future__ import annotations

import dataclasses

from bench.common import Result, Workspace, alternate, median

TARGET = 2.0  # vLLM's continuous batching and paged KV cache at least double the HF engine's items/s
MAX_NEW_TOKENS = 48


def run(workspace: Workspace, quick: bool, device) -> Result:
    if device.type != "cuda":
        raise RuntimeError("P9 needs a CUDA GPU and vLLM installed")
    from sherlock.data.llava_cot import load_llava_cot
    from sherlock.data.schema import open_image
    from sherlock.decoding import DecodingConfig
    from sherlock.generation import generate
    from sherlock.models.engines import load_generator
    from sherlock.models.families import family
    from sherlock.models.tiny import tokenizer_corpus

    data = load_llava_cot(workspace.data / "data.jsonl")
    model_dir = workspace.root / "p9-gemma3"
    if not (model_dir / "config.json").exists():
        family("gemma3").build(model_dir, tokenizer_corpus(data.records))
    records = data.records[: 16 if quick else 64]
    questions = [r.question for r in records]
    images = [open_image(data.image_root, r) for r in records]
    greedy = DecodingConfig(max_new_tokens=MAX_NEW_TOKENS, temperature=0.0, batch_size=len(records))
    engines = {name: load_generator(model_dir, name, "cuda") for name in ("hf", "vllm")}
    outputs: dict[str, list[str]] = {}

    def answer(name: str) -> callable:
        model, processor = engines[name]

        def call() -> None:
            outputs[name] = generate(model, processor, questions, images,
                                     config=dataclasses.replace(greedy, engine=name))
        return call

    times = alternate({name: answer(name) for name in engines}, rounds=1 if quick else 3)
    hf, vllm = (len(records) / median(times[name]) for name in ("hf", "vllm"))
    identical = sum(a == b for a, b in zip(outputs["hf"], outputs["vllm"], strict=True)) / len(records)
    return Result("P9 vLLM vs HF generation", "items/s", vllm, hf, vllm / hf, TARGET,
                  {"identical_greedy": identical, "items": len(records), "max_new_tokens": MAX_NEW_TOKENS,
                   "model": "tiny gemma3"})
