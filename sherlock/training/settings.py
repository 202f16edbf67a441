"""The settings every training stage shares: optimiser, schedule, LoRA/freezing, DeepSpeed, checkpoints
(no torch: the command line reads them before anything heavy is imported; :mod:`sherlock.training.setup`
applies them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sherlock.config import ConfigError, help_field
from sherlock.image_budget import ImageBudget

# LoRA on the language model's attention and MLP projections (cross-attention layers included).
DEFAULT_LORA_TARGET = r".*(language_model|text_model).*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
FINETUNING_MODES = ("full", "lora")


@dataclass(kw_only=True)
class TrainSettings(ImageBudget):
    """Optimiser, schedule, parameter-efficiency and checkpointing settings of a training stage, and its
    image token budget.
    """

    learning_rate: float = help_field(1e-5, "peak learning rate")
    epochs: float = help_field(1.0, "number of passes over the data")
    max_steps: int = help_field(-1, "stop after this many optimiser steps (-1: use epochs)")
    batch_size: int = help_field(16, "examples per device per step")
    grad_accum: int = help_field(1, "gradient accumulation steps")
    warmup_ratio: float = help_field(0.03, "fraction of steps with linear warm-up")
    weight_decay: float = help_field(0.0, "AdamW weight decay")
    lr_scheduler: str = help_field("cosine", "transformers scheduler name")
    seed: int = help_field(0, "seed of initialisation-free randomness (data order, dropout)")
    logging_steps: int = help_field(10, "log metrics every this many steps")
    save_steps: int = help_field(0, "checkpoint every this many steps (0: only the final model)")
    resume: bool = help_field(True, "resume from the last checkpoint in the output directory")
    finetuning: str = help_field("full", "full or lora")
    lora_r: int = help_field(8, "LoRA rank")
    lora_alpha: int = help_field(16, "LoRA alpha")
    lora_dropout: float = help_field(0.05, "LoRA dropout")
    lora_target: str = help_field(DEFAULT_LORA_TARGET, "regex of the modules LoRA adapts")
    freeze_vision: bool = help_field(False, "freeze the vision tower")
    freeze_projector: bool = help_field(False, "freeze the multimodal projector")
    freeze_language: bool = help_field(False, "freeze the language model")
    deepspeed: str | None = help_field(None, "DeepSpeed JSON config (e.g. configs/deepspeed/zero3.json)")
    gradient_checkpointing: bool = help_field(False, "recompute activations in the backward pass")

    def check_training(self) -> None:
        """Raise :class:`ConfigError` on inconsistent settings."""
        if self.finetuning not in FINETUNING_MODES:
            raise ConfigError(f"finetuning must be one of {FINETUNING_MODES}, got {self.finetuning!r}")
        if self.freeze_vision and self.freeze_projector and self.freeze_language:
            raise ConfigError("freezing the vision tower, projector and language model leaves nothing to train")
        if self.finetuning == "lora" and self.freeze_language:
            raise ConfigError("LoRA adapts the language model: freeze_language contradicts finetuning=lora")
        for name in ("learning_rate", "batch_size", "grad_accum"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise ConfigError("set epochs > 0 or max_steps > 0")
        if self.deepspeed and not Path(self.deepspeed).is_file():
            raise ConfigError(f"DeepSpeed config not found: {self.deepspeed}")
        if self.finetuning == "lora" and deepspeed_layout(self.deepspeed)["zero_stage"] == 3:
            raise ConfigError("LoRA adapters are merged into the saved model, which ZeRO-3's partitioned weights "
                              "do not allow: train LoRA with configs/deepspeed/zero2.json or without DeepSpeed")


def deepspeed_layout(path: str | None) -> dict:
    """``zero_stage``, ``offload_optimizer``, ``offload_params`` of a DeepSpeed JSON config (none: DDP, stage 0)."""
    if not path:
        return {"zero_stage": 0, "offload_optimizer": False, "offload_params": False}
    zero = json.loads(Path(path).read_text()).get("zero_optimization", {})
    return {"zero_stage": int(zero.get("stage", 0)),
            "offload_optimizer": zero.get("offload_optimizer", {}).get("device") == "cpu",
            "offload_params": zero.get("offload_param", {}).get("device") == "cpu"}
