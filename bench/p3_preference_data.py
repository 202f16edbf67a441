"""P3: building offline preference pairs — the rejected continuations Y^l_{≥i} of Alg. 1.

Project: :func:`rejected_suffixes` as the ``build-preferences`` stage calls it (left-padded batches
through one ``generate`` call with the KV cache). Baseline: one ``generate`` call per sample, as the
authors' scripts do. Same items, (i, ε) draws, perturbed images and decoding (T = 0.7).
"""

from __future__ import annotations

import dataclasses
import random

import torch

from bench.common import Result, Workspace, alternate, median

TARGET = 5.0


def measure(workspace: Workspace, items: int, max_new_tokens: int, device: torch.device, rounds: int) -> Result:
    from sherlock.data.llava_cot import load_llava_cot
    from sherlock.data.preferences import draw_perturbation
    from sherlock.data.schema import open_image
    from sherlock.decoding import DecodingConfig
    from sherlock.models.loading import load_vlm
    from sherlock.reasoning import truncate
    from sherlock.stages.build_preferences import rejected_suffixes

    data = load_llava_cot(workspace.data / "data.jsonl")
    records = data.records[:items]
    rng = random.Random(0)
    draws = [draw_perturbation(rng) for _ in records]
    prefixes = [truncate(r.response, d.truncation_step)[0] for r, d in zip(records, draws)]
    images = [open_image(data.image_root, r) for r in records]
    questions = [r.question for r in records]
    model, processor = load_vlm(workspace.model, dtype=torch.float32, device=str(device))
    batched = DecodingConfig(max_new_tokens=max_new_tokens, temperature=0.7, batch_size=32)
    one_by_one = dataclasses.replace(batched, batch_size=1)

    def build(decoding):
        return lambda: rejected_suffixes(model, processor, questions, images, prefixes, draws, decoding)

    times = alternate({"project": build(batched), "baseline": build(one_by_one)}, rounds=rounds, warmup=0)
    project, baseline = items / median(times["project"]), items / median(times["baseline"])
    return Result("P3 preference-data build", "items/s", project, baseline, project / baseline, TARGET,
                  {"items": items, "max_new_tokens": max_new_tokens, "generate_batch": batched.batch_size})


def run(workspace: Workspace, quick: bool, device: torch.device) -> Result:
    return measure(workspace, items=8 if quick else 64, max_new_tokens=8 if quick else 48, device=device,
                   rounds=1 if quick else 2)
