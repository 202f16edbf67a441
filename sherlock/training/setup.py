"""What every training stage shares, applied: LoRA/freezing, training arguments, checkpoints and resume.

:class:`~sherlock.training.settings.TrainSettings` (inherited by the SFT and preference stage configs)
maps onto ``transformers.TrainingArguments`` (or TRL's subclasses) with :func:`training_arguments`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from transformers import TrainerCallback, TrainingArguments

from sherlock import distributed
from sherlock.config import ConfigError
from sherlock.protocol import Protocol, write_protocol
from sherlock.training.settings import TrainSettings, deepspeed_layout

IGNORE_INDEX = -100  # a label position no loss is taken on (transformers' and TRL's convention)

# Sub-modules of the common VLM layouts (Mllama, Gemma 3, LLaVA, Idefics3: its language model is "text_model";
# Qwen-VL: the projector, "merger" and Qwen3-VL's DeepStack mergers, inside the tower "visual");
# tests/models/test_families.py checks them on every family of sherlock.models.families.
VISION_MODULES = ("vision_model", "vision_tower", "visual")
PROJECTOR_MODULES = ("multi_modal_projector", "mm_projector", "connector", "merger", "deepstack_merger_list")
LANGUAGE_MODULES = ("language_model", "text_model", "lm_head")
CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)")  # the Trainer's periodic saves
TRAINER_STATE = "trainer_state.json"


def part_of(parameter: str) -> str | None:
    """``projector``, ``vision`` or ``language``: the part a parameter's name puts it in (the projector
    first, which Qwen nests inside its tower), or None.
    """
    modules = set(parameter.split(".")[:-1])
    for part, names in (("projector", PROJECTOR_MODULES), ("vision", VISION_MODULES), ("language", LANGUAGE_MODULES)):
        if modules & set(names):
            return part
    return None


def freeze_modules(model, settings: TrainSettings) -> None:
    """Turn off gradients of the parts ``settings`` freezes; fails if a frozen part is not found."""
    frozen = {part for part, flag in (("vision", settings.freeze_vision), ("projector", settings.freeze_projector),
                                      ("language", settings.freeze_language)) if flag}
    found = set()
    for name, parameter in model.named_parameters():
        if (part := part_of(name)) in frozen:
            parameter.requires_grad_(False)
            found.add(part)
    if missing := frozen - found:
        raise ConfigError(f"no {' or '.join(sorted(missing))} module in {type(model).__name__} (its modules are "
                          f"named {VISION_MODULES}, {PROJECTOR_MODULES} or {LANGUAGE_MODULES} in the common layouts)")


def prepare_model(model, settings: TrainSettings):
    """Apply freezing and, for ``finetuning="lora"``, wrap the model with PEFT LoRA adapters."""
    freeze_modules(model, settings)
    if settings.finetuning == "lora":
        from peft import LoraConfig, get_peft_model
        from transformers import set_seed

        set_seed(settings.seed)  # the adapters are initialised here, before the Trainer seeds itself
        lora = LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
                          target_modules=settings.lora_target)
        model = get_peft_model(model, lora)
    return model


def finalise_model(model):
    """Merge LoRA adapters into the weights so the next stage loads a plain checkpoint."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def training_arguments(settings: TrainSettings, output_dir: str | Path, cls=TrainingArguments, **extra):
    """``cls`` (``TrainingArguments`` or a TRL config) filled from ``settings``; CPU-safe precision."""
    on_gpu = torch.cuda.is_available()
    if settings.deepspeed and not on_gpu and distributed.world_size() > 1:
        import deepspeed  # accelerate's CPU path (use_cpu) leaves DeepSpeed's communicator at one rank

        deepspeed.init_distributed(dist_backend="gloo")
    return cls(
        output_dir=str(output_dir),
        learning_rate=settings.learning_rate,
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accum,
        warmup_steps=settings.warmup_ratio,  # a float below 1 is a ratio of the total steps
        weight_decay=settings.weight_decay,
        lr_scheduler_type=settings.lr_scheduler,
        seed=settings.seed,
        data_seed=settings.seed,
        logging_steps=settings.logging_steps,
        save_strategy="steps" if settings.save_steps else "no",
        save_steps=settings.save_steps or 500,
        save_total_limit=2 if settings.save_steps else None,
        deepspeed=settings.deepspeed,
        gradient_checkpointing=settings.gradient_checkpointing,
        bf16=on_gpu,
        use_cpu=not on_gpu,
        report_to=[],
        dataloader_num_workers=0,
        **extra,
    )


class ConvertedCheckpointResume:
    """Trainer mixin: resume loads the checkpoint's weights through ``from_pretrained``.

    ``Trainer._load_from_checkpoint`` (transformers 5.23) reads ``model.safetensors`` and calls
    ``load_state_dict(strict=False)``. Models whose saved key names are converted on load (Mllama:
    ``language_model.model.*`` on disk, ``model.language_model.*`` in memory) then match no key and
    training silently restarts from the initial weights. ``from_pretrained`` applies the conversion;
    the strict load fails loudly if anything is still missing. PEFT and FSDP checkpoints keep the
    ``Trainer`` path.
    """

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        model = model if model is not None else self.model
        if hasattr(model, "peft_config") or self.is_fsdp_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        dtype = next(model.parameters()).dtype
        saved = type(model).from_pretrained(resume_from_checkpoint, dtype=dtype, local_files_only=True)
        model.load_state_dict(saved.state_dict(), strict=True)


def incomplete(checkpoint: Path) -> str | None:
    """Why ``checkpoint`` cannot be resumed from (a save cut short), or None when it is complete: a
    readable ``trainer_state.json``, every safetensors file whole (and every shard of an index), the
    optimizer and scheduler states (torch's zip format) whole where present.
    """
    try:
        json.loads((checkpoint / TRAINER_STATE).read_text())["global_step"]
    except (OSError, ValueError, KeyError) as error:
        return f"{TRAINER_STATE} unreadable ({type(error).__name__})"
    index = checkpoint / "model.safetensors.index.json"
    try:
        shards = set(json.loads(index.read_text())["weight_map"].values()) if index.is_file() else set()
    except (ValueError, KeyError):
        return f"{index.name} unreadable"
    if missing := sorted(name for name in shards if not (checkpoint / name).is_file()):
        return f"shards missing: {missing}"
    for weights in sorted(checkpoint.glob("*.safetensors")):
        try:
            with safe_open(str(weights), "pt"):
                pass
        except (OSError, SafetensorError) as error:
            return f"{weights.name} unreadable ({error})"
    for state in ("optimizer.pt", "scheduler.pt"):
        if (checkpoint / state).exists() and not zipfile.is_zipfile(checkpoint / state):
            return f"{state} is not whole"
    return None


def resume_checkpoint(settings: TrainSettings, output_dir: str | Path) -> str | None:
    """The newest complete ``checkpoint-N`` in ``output_dir`` when resuming is on (:func:`incomplete`:
    a checkpoint whose save was cut short is skipped, with its reason, for the one before it).
    """
    output_dir = Path(output_dir)
    if not settings.resume or not output_dir.is_dir():
        return None
    numbered = [(int(m.group(1)), path) for path in output_dir.iterdir()
                if path.is_dir() and (m := CHECKPOINT_NAME.fullmatch(path.name))]
    for _, checkpoint in sorted(numbered, reverse=True):
        if (reason := incomplete(checkpoint)) is None:
            print(f"resuming from {checkpoint}", file=sys.stderr)
            return str(checkpoint)
        print(f"warning: skipping {checkpoint}: incomplete, {reason}", file=sys.stderr)
    return None


class MlflowMetricsCallback(TrainerCallback):
    """Logs every ``Trainer`` log line (loss terms, ``rewards/*``, β statistics) to the active MLflow run."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        """Log the trainer's metrics to the active MLflow run at the global step."""
        import mlflow

        if state.is_world_process_zero and mlflow.active_run() is not None and logs:
            numbers = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            mlflow.log_metrics(numbers, step=state.global_step)


class RemainderNotice(logging.Filter):
    """Drops accelerate's "returning gathered tensors" notice, which ``gather_for_metrics`` logs at INFO on
    every step for a dataloader without a length (the length-bucketed and packed ones): under KFP's INFO
    root logger it was 288 lines of one embedded run, about a remainder the training logs never hold.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """False for that notice alone."""
        return "returning gathered tensors" not in record.getMessage()


REMAINDER_NOTICE = RemainderNotice()


def train_and_save(trainer, settings: TrainSettings, output_dir: str | Path, processor,
                   protocol: Protocol) -> Path:
    """Train (resuming when asked), then save the final state, merged model, processor and how the model
    self-corrects (:mod:`sherlock.protocol`; rank 0 writes them; the other ranks wait, so what comes next may
    read them).

    With ``MLFLOW_TRACKING_URI`` set, every log line also goes to the active MLflow stage run.
    """
    if os.environ.get("MLFLOW_TRACKING_URI"):
        import mlflow

        if mlflow.active_run() is not None:
            trainer.add_callback(MlflowMetricsCallback())
    logging.getLogger("accelerate.accelerator").addFilter(REMAINDER_NOTICE)  # once: the same filter object
    trainer.train(resume_from_checkpoint=resume_checkpoint(settings, output_dir))
    trainer.save_state()
    output_dir = Path(output_dir)
    if deepspeed_layout(settings.deepspeed)["zero_stage"] == 3:  # partitioned weights: every rank gathers them,
        trainer.save_model(str(output_dir))  # rank 0 writes them and the trainer's processor
    elif distributed.is_main():
        finalise_model(trainer.model).save_pretrained(output_dir)
        processor.save_pretrained(output_dir)
    if distributed.is_main():
        write_protocol(output_dir, protocol)
    distributed.barrier()
    return output_dir
