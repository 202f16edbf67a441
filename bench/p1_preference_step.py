"""P1: one Sherlock preference training step (10-sequence layout, L_SC + α·L_DPO, dynamic β).

Project: :class:`SherlockTrainer`'s loss — the unique sequences of a batch of pairs, each context run
once and continued by its suffixes (``packed_logps``), reference log-probs from the cache.
Baseline: the same objective computed naively — a policy forward and a reference forward for every one of
the 10 sequences of every pair, every step. Both start from the same weights, see the same batches and take
AdamW steps; the losses must agree to 1e-5. The models train in training mode, as the ``Trainer`` runs them.
Measured on the workspace's tiny Mllama and on a tiny model of every other family
(:data:`sherlock.models.families.FAMILIES`, its tokenizer trained on the workspace's data). The bound on the
project's step: ≥ 3× the baseline's speed (TARGET) at ≤ 2× its peak memory (a second line per family:
baseline / project peak ≥ 0.5). On Mllama a third arm runs the step with activation checkpointing on the
policy (the paper presets' ``gradient_checkpointing``). ``whole_rows`` adds an arm with the same objective
from whole-row forward passes (``full_row_logps``): packing against the attention kernels a GPU picks
for an unmasked batch (``bench.gpu``).
"""

from __future__ import annotations

import copy

import torch

from bench.common import PeakMemory, Result, Workspace, alternate, loss_tolerance, median

TARGET = 3.0
MEMORY_TARGET = 0.5  # baseline / project peak memory growth: the project's at most 2x the baseline's
CHECKPOINTED_TARGET = 2.0
TOLERANCE = 1e-5


def naive_logps(model, item: dict, collator) -> torch.Tensor:
    """(10,) log-probs of one pair's sequences, one whole-row forward pass per sequence (duplicates included)."""
    from sherlock.losses import NUM_SEQUENCES
    from sherlock.training.packing import full_row_logps

    values = []
    for slot in range(NUM_SEQUENCES):
        single = item | {"sequences": [item["sequences"][item["slots"][slot]]], "slots": [0] * NUM_SEQUENCES}
        batch = {k: v.to(model.device) for k, v in collator([single]).items()}
        values.append(full_row_logps(model, batch)[0])
    return torch.stack(values)


def measure(workspace: Workspace, model_dir, family: str, steps: int, batch_size: int, device: torch.device,
            checkpointed: bool = False, dtype: torch.dtype = torch.float32, whole_rows: bool = False,
            count_flops: bool = False) -> list[Result]:
    from transformers import TrainingArguments

    from sherlock.data.preferences import read_pairs
    from sherlock.losses import SherlockLossConfig, sherlock_objective
    from sherlock.models.loading import load_vlm
    from sherlock.training.packing import full_row_logps
    from sherlock.training.preference_trainer import SherlockTrainer
    from sherlock.training.reference import compute_reference_logps
    from sherlock.training.sequences import PreferenceCollator, PreferenceDataset, labelled_tokens

    model, processor = load_vlm(model_dir, dtype=dtype, device=str(device))
    pairs = read_pairs(workspace.pairs)
    dataset = PreferenceDataset(pairs, workspace.pairs, processor)
    collator = PreferenceCollator(processor.tokenizer.pad_token_id)
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    cached = compute_reference_logps(reference, dataset, collator, batch_size)
    config = SherlockLossConfig()
    trainer = SherlockTrainer(model=model, args=TrainingArguments(str(workspace.root / "p1"), report_to=[],
                                                                  use_cpu=device.type == "cpu"),
                              reference_logps=cached, loss_config=config)
    batches = [list(range(start, start + batch_size)) for start in range(0, len(dataset) - batch_size + 1, batch_size)]

    def naive_loss(policy_model, items):
        policy = torch.stack([naive_logps(policy_model, item, collator) for item in items])
        with torch.no_grad():
            ref = torch.stack([naive_logps(reference, item, collator) for item in items])
        batch = collator(items)
        return sherlock_objective(policy, ref, batch["truncation_step"].to(device), batch["noise_level"].to(device),
                                  config)[0]

    def project_loss(items, policy=model):
        return trainer.compute_loss(policy, {k: v.to(device) for k, v in collator(items).items()})

    def whole_row_loss(items, policy):
        batch = {k: v.to(device) for k, v in collator(items).items()}
        reference_logps = cached[batch["index"].cpu()].to(device)
        return sherlock_objective(full_row_logps(policy, batch)[batch["slots"]], reference_logps,
                                  batch["truncation_step"], batch["noise_level"], config, labelled_tokens(batch))[0]

    # the objective: both implementations on the same weights, every batch
    differences = []
    with torch.no_grad():
        for indices in batches[: steps + 1]:
            items = [dataset[i] for i in indices]
            differences.append(abs(float(project_loss(items)) - float(naive_loss(model, items))))
    tolerance = loss_tolerance(TOLERANCE, dtype)
    if max(differences) > tolerance:
        raise AssertionError(f"P1 [{family}]: the losses differ by {max(differences):.2e} > {tolerance}")

    flops = {}
    if count_flops:  # one project step's FLOPs (forward and backward), for its MFU
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            project_loss([dataset[i] for i in batches[0]]).backward()
        model.zero_grad(set_to_none=True)
        flops = {"flops_per_step": counter.get_total_flops()}

    # the speed: separate copies from the same weights, the same batches in the same order
    models = {"project": model, "baseline": copy.deepcopy(model)}
    if checkpointed:
        models["checkpointed"] = copy.deepcopy(model)
        models["checkpointed"].gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if whole_rows:
        models["whole rows"] = copy.deepcopy(model)
    for policy in models.values():
        policy.train()  # as the Trainer runs it; activation checkpointing is active only in training mode
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-5) for name, m in models.items()}
    memory: dict[str, float] = {}
    cursor = dict.fromkeys(models, 0)

    def step(name: str) -> None:
        items = [dataset[i] for i in batches[cursor[name] % len(batches)]]
        cursor[name] += 1
        with PeakMemory(device) as peak:
            loss = naive_loss(models[name], items) if name == "baseline" else \
                whole_row_loss(items, models[name]) if name == "whole rows" else project_loss(items, models[name])
            loss.backward()
            optimizers[name].step()
            optimizers[name].zero_grad()
        memory[name] = max(memory.get(name, 0.0), peak.mib)

    times = alternate({name: lambda name=name: step(name) for name in models}, rounds=steps)
    speed = {name: batch_size / median(seconds) for name, seconds in times.items()}
    name = "P1 Sherlock preference step" + ("" if family == "mllama" else f" [{family}]")
    details = {"family": family, "batch_pairs": batch_size, "steps": steps, "max_loss_difference": max(differences),
               "peak_memory_mib": memory, "dtype": str(dtype).removeprefix("torch."), "pairs_per_second": speed} | flops
    results = [Result(name, "pairs/s", speed["project"], speed["baseline"], speed["project"] / speed["baseline"],
                      TARGET, details),
               Result(name + ", peak memory", "MiB (lower is better)", memory["project"], memory["baseline"],
                      memory["baseline"] / memory["project"], MEMORY_TARGET, details)]
    if checkpointed:
        results.append(Result(name + ", activation checkpointing", "pairs/s", speed["checkpointed"],
                              speed["baseline"], speed["checkpointed"] / speed["baseline"], CHECKPOINTED_TARGET,
                              details | {"memory_ratio": memory["checkpointed"] / memory["baseline"]}))
    if whole_rows:
        results.append(Result(name + ", packed vs whole rows", "pairs/s", speed["project"], speed["whole rows"],
                              speed["project"] / speed["whole rows"], 1.0, details))
    return results


def run(workspace: Workspace, quick: bool, device: torch.device) -> list[Result]:
    from sherlock.data.llava_cot import load_llava_cot
    from sherlock.models.families import FAMILIES
    from sherlock.models.tiny import tokenizer_corpus

    models = {"mllama": workspace.model} | {name: workspace.root / f"p1-{name}" for name in sorted(FAMILIES)
                                            if name != "mllama"}
    missing = [name for name, model_dir in models.items() if not (model_dir / "config.json").exists()]
    if missing:
        corpus = tokenizer_corpus(load_llava_cot(workspace.data / "data.jsonl").records)
        for name in missing:
            FAMILIES[name].build(models[name], corpus)
    return [result for name, model_dir in models.items()
            for result in measure(workspace, model_dir, name, steps=2 if quick else 8, batch_size=2 if quick else 4,
                                  device=device, checkpointed=name == "mllama")]
