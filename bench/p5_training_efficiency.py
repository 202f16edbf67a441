"""P5: training efficiency — achieved FLOP/s of an SFT step over the matmul FLOP/s of this machine.

The step is the project's SFT path on the tiny model: a batch of the synthetic task collated by the
SFT stage's TRL ``SFTTrainer`` (assistant-only loss), forward and backward, and an update by the
optimizer that trainer creates. Its FLOPs are counted by
``torch.utils.flop_counter.FlopCounterMode`` (every matmul/convolution of forward and backward);
the baseline is the best FLOP/s of square ``torch.mm`` calls in the model's dtype measured in the same
run (float32 here; ``bench.gpu`` runs it in bfloat16 on a GPU, where the ratio is the MFU).
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.common import Result, Workspace, alternate, median
from sherlock.machine import matmul_flops_per_second

TARGET = 0.25


def sft_batch(workspace: Workspace, batch_size: int, device: torch.device, dtype: torch.dtype = torch.float32):
    """The SFT stage's trainer and one batch collated by it."""
    from trl import SFTConfig

    from sherlock.data.llava_cot import load_llava_cot
    from sherlock.models.loading import load_vlm
    from sherlock.training.settings import TrainSettings
    from sherlock.training.setup import training_arguments
    from sherlock.training.sft import VLMSFTTrainer, examples_from_records, sft_dataset

    data = load_llava_cot(workspace.data / "data.jsonl")
    model, processor = load_vlm(workspace.model, dtype=dtype, device=str(device))
    settings = TrainSettings(batch_size=batch_size)
    args = training_arguments(settings, workspace.root / "p5", SFTConfig, assistant_only_loss=True, max_length=None)
    trainer = VLMSFTTrainer(model=model, args=args, processing_class=processor,
                            train_dataset=sft_dataset(examples_from_records(data.records, data.image_root)))
    batch = next(iter(trainer.get_train_dataloader()))
    return trainer, {k: v.to(device) for k, v in batch.items()}


def measure(workspace: Workspace, batch_size: int, steps: int, device: torch.device,
            dtype: torch.dtype = torch.float32) -> Result:
    trainer, batch = sft_batch(workspace, batch_size, device, dtype)
    model = trainer.model
    model.train()
    optimizer = trainer.create_optimizer()  # the optimizer the stage trains with (Trainer's default AdamW)

    def step() -> None:
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if device.type == "cuda":
            torch.cuda.synchronize()

    with FlopCounterMode(display=False) as counter:
        model(**batch).loss.backward()
    optimizer.zero_grad()
    flops = counter.get_total_flops()
    seconds = median(alternate({"sft": step}, rounds=steps)["sft"])
    peak = matmul_flops_per_second(device, dtype=dtype)
    achieved = flops / seconds
    tokens = int(batch["attention_mask"].sum())
    return Result("P5 SFT training efficiency", "GFLOP/s", achieved / 1e9, peak / 1e9, achieved / peak, TARGET, {
        "flops_per_step": flops, "step_seconds": seconds, "batch_size": batch_size, "tokens_per_step": tokens,
        "parameters": sum(p.numel() for p in model.parameters()), "dtype": str(dtype).removeprefix("torch.")})


def run(workspace: Workspace, quick: bool, device: torch.device) -> Result:
    from sherlock.stages.registry import preset

    batch_size = 4 if quick else preset("sft.r0", "embedded")["batch_size"]  # the embedded R0 stage's batch
    return measure(workspace, batch_size=batch_size, steps=2 if quick else 6, device=device)
