"""P2: plain DPO (static β, L_DPO only) — the project's trainer against TRL's ``DPOTrainer``.

Same tiny model, pairs (prompt = question + image, chosen = Y^w, rejected = Y^l), batch, AdamW.
Project: :class:`SherlockTrainer` with ``use_sc=False, dynamic_beta=False, alpha=1`` (2 sequences
per pair, reference log-probs computed once and cached). Baseline: TRL 1.16 ``DPOTrainer``
(``loss_type="sigmoid"``, the same β, an explicit frozen reference model it runs every step; TRL
refuses to precompute reference log-probs for vision data). TRL's vision collator mishandles Mllama
twice (a prompt-only ``cross_attention_mask`` that crashes the forward pass, and a BOS the Mllama
processor prepends to every completion); the baseline's collator repairs both batches (see
:func:`fix_mllama_batch`) and changes nothing else. Before timing, both losses are computed on the same
(perturbed, so that π ≠ π_ref) weights and must agree to 1e-4.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from bench.common import Result, Workspace, alternate, loss_tolerance, median

TARGET = 1.3
TOLERANCE = 1e-4
BETA = 0.1


def fix_mllama_batch(batch: dict, image_token_id: int, bos_token_id: int) -> dict:
    """Two Mllama fixes to a batch of TRL's vision preference collator.

    Mllama's processor prepends ``<|begin_of_text|>`` to every text it encodes, completions
    included, so each completion starts with a spurious (and labelled) BOS: it is removed. The
    ``cross_attention_mask`` is the prompt's only: it is rebuilt for the whole row (every token
    from the image on attends to it), as the Mllama processor builds it for a full text.
    """
    rows, masks = [], []
    for ids, attention, completion in zip(batch["input_ids"], batch["attention_mask"], batch["completion_mask"]):
        ids, completion = ids[attention.bool()], completion[attention.bool()]
        start = int(completion.nonzero()[0])
        if ids[start] == bos_token_id:
            ids, completion = torch.cat([ids[:start], ids[start + 1:]]), torch.cat([completion[:start],
                                                                                    completion[start + 1:]])
        rows.append(ids)
        masks.append(completion)
    length = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), length), 0, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    completion_mask = torch.zeros_like(input_ids)
    for index, (ids, completion) in enumerate(zip(rows, masks)):
        input_ids[index, : len(ids)], attention_mask[index, : len(ids)] = ids, 1
        completion_mask[index, : len(ids)] = completion
    after_image = (input_ids == image_token_id).long().cummax(dim=1).values * attention_mask
    tiles = batch["cross_attention_mask"].shape[2:]
    cross = after_image[:, :, None, None].expand(*input_ids.shape, *tiles).clone()
    return batch | {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask,
                    "cross_attention_mask": cross}


def trl_trainer(workspace: Workspace, model, reference, processor, pairs, batch_size: int, sft_weight: float = 0.0):
    """TRL's ``DPOTrainer`` (sigmoid loss, β = 0.1; with ``sft_weight``, plus its ``sft`` loss so weighted)."""
    from datasets import Dataset
    from PIL import Image
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

    from sherlock.chat import user_turn

    image_token_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)

    class MllamaVisionPreferenceCollator(DataCollatorForVisionPreference):
        def torch_call(self, examples):
            return fix_mllama_batch(super().torch_call(examples), image_token_id, processor.tokenizer.bos_token_id)

    # prompt-completion text: the prompt rendered by the chat template, the completion + <|eot_id|>
    end_of_turn = processor.tokenizer.eos_token
    rows = {"images": [[Image.open(workspace.pairs / p.image).convert("RGB")] for p in pairs],
            "prompt": [processor.apply_chat_template([user_turn(p.question)], add_generation_prompt=True)
                       for p in pairs],
            "chosen": [p.chosen + end_of_turn for p in pairs],
            "rejected": [p.rejected + end_of_turn for p in pairs]}
    args = DPOConfig(output_dir=str(workspace.root / "p2-trl"), per_device_train_batch_size=batch_size, beta=BETA,
                     loss_type=["sigmoid", "sft"] if sft_weight else ["sigmoid"],
                     loss_weights=[1.0, sft_weight] if sft_weight else None,
                     max_length=None, report_to=[], use_cpu=not torch.cuda.is_available(),
                     bf16=False,  # DPOConfig defaults to bf16 autocast of the policy only; both sides run float32
                     remove_unused_columns=False)
    return DPOTrainer(model=model, ref_model=reference, args=args, train_dataset=Dataset.from_dict(rows),
                      processing_class=processor,
                      data_collator=MllamaVisionPreferenceCollator(processor=processor, max_length=None))


@dataclass
class Compared:
    """The project's and TRL's trainers on the same perturbed weights, pairs and batches."""

    model: torch.nn.Module
    trl_model: torch.nn.Module
    our_loss: Callable[[list[int]], torch.Tensor]
    trl_loss: Callable[[list[int]], torch.Tensor]
    batches: list[list[int]]
    reference_seconds: float
    pairs: int


def compare(workspace: Workspace, batch_size: int, device: torch.device, sft_weight: float = 0.0,
            dtype: torch.dtype = torch.float32) -> Compared:
    """Both trainers (plain DPO, β = 0.1; with ``sft_weight``, plus the per-token SFT term on y_w)."""
    from transformers import TrainingArguments

    from sherlock.data.preferences import read_pairs
    from sherlock.losses import DPO_SEQUENCES, SherlockLossConfig
    from sherlock.models.loading import load_vlm
    from sherlock.training.preference_trainer import SherlockTrainer
    from sherlock.training.reference import compute_reference_logps
    from sherlock.training.sequences import PreferenceCollator, PreferenceDataset

    model, processor = load_vlm(workspace.model, dtype=dtype, device=str(device))
    with torch.no_grad():  # move π away from π_ref so that the equality check is not log 2 = log 2
        generator = torch.Generator().manual_seed(0)
        for parameter in model.model.language_model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator).to(parameter) * 0.02)
    reference, _ = load_vlm(workspace.model, dtype=dtype, device=str(device))
    reference.eval().requires_grad_(False)
    pairs = read_pairs(workspace.pairs)
    dataset = PreferenceDataset(pairs, workspace.pairs, processor, DPO_SEQUENCES)
    collator = PreferenceCollator(processor.tokenizer.pad_token_id)
    start = time.perf_counter()
    cached = compute_reference_logps(reference, dataset, collator, batch_size)
    reference_seconds = time.perf_counter() - start
    ours = SherlockTrainer(model=model, args=TrainingArguments(str(workspace.root / "p2"), report_to=[],
                                                               use_cpu=device.type == "cpu"),
                           reference_logps=cached, loss_config=SherlockLossConfig(
                               dpo_beta=BETA, alpha=1.0, dynamic_beta=False, use_sc=False, sft_weight=sft_weight,
                               sft_per_token=True))
    trl_model = copy.deepcopy(model)
    trl = trl_trainer(workspace, trl_model, reference, processor, pairs, batch_size, sft_weight)

    def our_loss(indices):
        return ours.compute_loss(model, {k: v.to(device) for k, v in collator([dataset[i] for i in indices]).items()})

    def trl_loss(indices):
        batch = trl.data_collator([dict(trl.train_dataset[i]) for i in indices])
        return trl.compute_loss(trl_model, {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()})

    batches = [list(range(s, s + batch_size)) for s in range(0, len(pairs) - batch_size + 1, batch_size)]
    return Compared(model, trl_model, our_loss, trl_loss, batches, reference_seconds, len(pairs))


def measure(workspace: Workspace, steps: int, batch_size: int, device: torch.device,
            dtype: torch.dtype = torch.float32) -> Result:
    compared = compare(workspace, batch_size, device, dtype=dtype)
    model, trl_model, batches = compared.model, compared.trl_model, compared.batches
    our_loss, trl_loss, reference_seconds = compared.our_loss, compared.trl_loss, compared.reference_seconds
    with torch.no_grad():
        differences = [abs(float(our_loss(b)) - float(trl_loss(b))) for b in batches[: steps + 1]]
    if max(differences) > loss_tolerance(TOLERANCE, dtype):
        raise AssertionError(f"P2: the project's and TRL's DPO losses differ by {max(differences):.2e}")

    optimizers = {"project": torch.optim.AdamW(model.parameters(), lr=1e-5),
                  "baseline": torch.optim.AdamW(trl_model.parameters(), lr=1e-5)}
    cursor = {"project": 0, "baseline": 0}

    def step(name: str) -> None:
        indices = batches[cursor[name] % len(batches)]
        cursor[name] += 1
        loss = our_loss(indices) if name == "project" else trl_loss(indices)
        loss.backward()
        optimizers[name].step()
        optimizers[name].zero_grad()

    times = alternate({"project": lambda: step("project"), "baseline": lambda: step("baseline")}, rounds=steps)
    project, baseline = batch_size / median(times["project"]), batch_size / median(times["baseline"])
    return Result("P2 plain DPO step", "pairs/s", project, baseline, project / baseline, TARGET, {
        "batch_pairs": batch_size, "steps": steps, "max_loss_difference": max(differences),
        "reference_precompute_seconds": reference_seconds, "pairs": compared.pairs,
        "dtype": str(dtype).removeprefix("torch.")})


def run(workspace: Workspace, quick: bool, device: torch.device) -> Result:
    return measure(workspace, steps=2 if quick else 8, batch_size=2 if quick else 8, device=device)
