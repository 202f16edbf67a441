"""P6: Sherlock-SFT throughput — length-balanced micro-batches against random batches of the same size.

Sherlock-SFT (Eq. 3) trains direct sequences and correction sequences that quote a whole response,
so a random batch pads most sequences to a correction sequence's length. The project's path draws
the same ``batch_size × grad_accum`` examples per optimiser step and splits them into micro-batches
of similar length (:mod:`sherlock.training.sft`, ``length_balanced``); the baseline is the stage
without it, one random batch of that size per step. Both run ``train_sft`` (TRL's ``SFTTrainer``)
for the same optimiser steps on the same examples, alternating; the metric is examples per second.
The correction sequences quote another record's response as Y^l (a sampled Y^l has that length).
Beside the rate it reports each arm's padded tokens over real tokens for one epoch of its sampler.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from bench.common import Result, Workspace, median

TARGET = 1.3
STEP_EXAMPLES = 16  # examples per optimiser step, as the embedded Sherlock-SFT stage
MICRO_BATCHES = 4


def sherlock_sft_examples(workspace: Workspace):
    """Direct and correction sequences of the workspace's records (Y^l: the next record's response)."""
    from sherlock.data.llava_cot import load_llava_cot
    from sherlock.training.sft import correction_examples, examples_from_records

    data = load_llava_cot(workspace.data / "data.jsonl")
    records = data.records
    rejected = {r.id: records[(k + 1) % len(records)].response for k, r in enumerate(records)}
    return examples_from_records(records, data.image_root) + correction_examples(records, rejected, data.image_root)


def padding(workspace: Workspace, examples) -> dict[str, float]:
    """Padded tokens / real tokens over one epoch: random batches of 16 against balanced micro-batches."""
    from transformers.trainer_pt_utils import BatchRebalanceSampler

    from sherlock.models.loading import load_vlm
    from sherlock.training.sft import token_lengths

    lengths = token_lengths(examples, load_vlm(workspace.model)[1])
    order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0)).tolist()
    batches = {"random": [order[k:k + STEP_EXAMPLES] for k in range(0, len(order), STEP_EXAMPLES)],
               "balanced": list(BatchRebalanceSampler(lengths, STEP_EXAMPLES, 1, MICRO_BATCHES, drop_last=False))}
    return {name: sum(len(b) * max(lengths[i] for i in b) for b in chunks) / sum(lengths)
            for name, chunks in batches.items()}


def run(workspace: Workspace, quick: bool, device: torch.device) -> Result:
    from sherlock.training.settings import TrainSettings
    from sherlock.training.sft import train_sft

    examples = sherlock_sft_examples(workspace)
    steps = 2 if quick else len(examples) // STEP_EXAMPLES
    arms = {"balanced": (TrainSettings(batch_size=STEP_EXAMPLES // MICRO_BATCHES, grad_accum=MICRO_BATCHES,
                                       max_steps=steps, logging_steps=steps), True),
            "random": (TrainSettings(batch_size=STEP_EXAMPLES, max_steps=steps, logging_steps=steps), False)}
    seconds: dict[str, list[float]] = {name: [] for name in arms}
    with tempfile.TemporaryDirectory(dir=workspace.root) as scratch:
        for round_ in range(1 if quick else 3):
            for name, (settings, balanced) in arms.items():
                start = time.perf_counter()
                train_sft(workspace.model, examples, Path(scratch) / f"{name}-{round_}", settings, balanced)
                seconds[name].append(time.perf_counter() - start)
    rates = {name: steps * STEP_EXAMPLES / median(times) for name, times in seconds.items()}
    return Result("P6 Sherlock-SFT throughput", "examples/s", rates["balanced"], rates["random"],
                  rates["balanced"] / rates["random"], TARGET,
                  {"steps": steps, "examples_per_step": STEP_EXAMPLES, "micro_batches": MICRO_BATCHES,
                   "examples": len(examples), "round_seconds": seconds,
                   "padded_over_real_tokens": padding(workspace, examples)})
