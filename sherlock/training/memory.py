"""Memory per GPU of a training step, planned from the checkpoint's config before any GPU is held.

Model states (weights, gradients, Adam) come from DeepSpeed's own estimators for ZeRO-2 and
ZeRO-3 (``estimate_zero{2,3}_model_states_mem_needs``) with the parameter counts of the model
built on the meta device (no weights read); DDP (no DeepSpeed) and LoRA, which those estimators do
not cover, are counted the same way: 2 bytes per 16-bit weight, 18 per trained parameter (16-bit
gradient, fp32 gradient, master weight, Adam's two moments), divided by the GPUs where ZeRO shards
them. Activations follow Korthikanti et al. (2022), 34·s·b·h bytes per layer in 16 bits with fused
attention (no s² term), 2·s·b·h per layer plus one recomputed layer under activation checkpointing,
and 8 bytes per logit (fp32 logits and their log-softmax); a frozen vision tower keeps none. The
result is an estimate: allocator fragmentation and communication buffers come on top (the plan
leaves :data:`HEADROOM` of the GPU free).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from sherlock import distributed
from sherlock.config import ConfigError, help_field
from sherlock.training.settings import DEFAULT_LORA_TARGET, deepspeed_layout

GiB = 2**30
HEADROOM = 0.9  # a plan fits when it needs at most this fraction of a GPU's memory
BYTES_16BIT = 2
BYTES_PER_TRAINED_PARAMETER = 18  # DeepSpeed's count: 16-bit gradient + fp32 gradient, master weight, Adam m and v
ACTIVATION_BYTES_PER_LAYER = 34  # × sequence × batch × hidden, 16-bit, fused attention (Korthikanti et al., 2022)
CHECKPOINTED_BYTES_PER_LAYER = 2  # the layer's 16-bit input, kept under activation checkpointing
LOGIT_BYTES = 8  # fp32 logits and their log-softmax


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs from a checkpoint: parameter counts and the sizes activations scale with."""

    parameters: int
    largest_layer: int  # parameters of the largest module (ZeRO-3 gathers one at a time)
    lora_parameters: int  # what LoRA would train: r × (inputs + outputs) of every targeted linear layer
    hidden: int
    layers: int
    vocabulary: int
    vision_hidden: int = 0
    vision_layers: int = 0
    vision_tokens: int = 0  # per image (every tile's patches and class token)


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per GPU of one training step (and CPU bytes per node for offloaded states)."""

    model_states: int
    activations: int
    cpu_per_node: int
    description: str

    @property
    def per_gpu(self) -> int:
        """Bytes per GPU: model states and activations."""
        return self.model_states + self.activations

    def line(self) -> str:
        """The plan as one line for logs and refusals."""
        return (f"memory plan ({self.description}): {self.per_gpu / GiB:.1f} GiB per GPU = model states "
                f"{self.model_states / GiB:.1f} + activations {self.activations / GiB:.1f}"
                + (f"; CPU {self.cpu_per_node / GiB:.0f} GiB per node" if self.cpu_per_node else ""))


@dataclass(frozen=True)
class Layout:
    """How a step trains: what is trained, how states are sharded, how many GPUs, how big a micro-batch."""

    finetuning: str = "full"  # or "lora"
    zero_stage: int = 0  # 0: DDP (no DeepSpeed)
    offload_optimizer: bool = False
    offload_params: bool = False
    gpus_per_node: int = 1
    nodes: int = 1
    sequence_length: int = 2048
    batch_size: int = 1  # examples (SFT) or pairs (preference training) per micro-batch on one GPU
    rows_per_example: int = 1  # sequences one example runs (a Sherlock pair: its unique sequences, up to 10)
    gradient_checkpointing: bool = False
    freeze_vision: bool = False

    @property
    def rows(self) -> int:
        """Sequences in one micro-batch, each with its own image (the Mllama collators repeat it per row)."""
        return self.batch_size * self.rows_per_example

    def describe(self) -> str:
        """The layout in words (ZeRO stage, offload, GPUs, batch)."""
        zero = f"ZeRO-{self.zero_stage}" if self.zero_stage else "DDP"
        offload = "+".join(name for name, on in (("optimizer", self.offload_optimizer), ("params", self.offload_params))
                           if on)
        return (f"{self.finetuning}, {zero}{f' offload {offload}' if offload else ''}, "
                f"{self.gpus_per_node} GPU x {self.nodes} node, {self.rows} x {self.sequence_length} tokens"
                f"{', activation checkpointing' if self.gradient_checkpointing else ''}")


def image_budget_pixels(model_dir: str | Path) -> int:
    """The most pixels the checkpoint's image processor gives one image (Qwen's ``max_pixels``: its
    ``size.longest_edge``), from ``processor_config.json`` or ``preprocessor_config.json``.
    """
    import json

    for name in ("processor_config.json", "preprocessor_config.json"):
        path = Path(model_dir) / name
        if path.is_file():
            settings = json.loads(path.read_text())
            settings = settings.get("image_processor", settings)
            if budget := settings.get("max_pixels") or settings.get("size", {}).get("longest_edge"):
                return int(budget)
    raise ConfigError(f"{model_dir}: the vision config has no image_size and no processor config gives an image "
                      "budget (max_pixels); save the processor beside config.json")


def model_shape(model_dir: str | Path, lora_target: str = DEFAULT_LORA_TARGET, lora_r: int = 8,
                max_pixels: int | None = None) -> ModelShape:
    """Count the parameters of the checkpoint's model built on the meta device (its ``config.json``; for a
    vision tower without a fixed image size, Qwen's, ``max_pixels`` or else the processor's pixel budget:
    :func:`image_budget_pixels`).
    """
    import re

    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    text = getattr(config, "text_config", config)
    vision = getattr(config, "vision_config", None)
    lora = sum(lora_r * (m.in_features + m.out_features) for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and re.fullmatch(lora_target, name))
    shape = {"parameters": sum(p.numel() for p in model.parameters()), "lora_parameters": lora,
             "largest_layer": max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()),
             "hidden": text.hidden_size, "layers": text.num_hidden_layers, "vocabulary": text.vocab_size}
    if vision is not None:
        if hasattr(vision, "image_size"):
            patches = (vision.image_size // vision.patch_size) ** 2 + 1
        else:  # Qwen: as many patches as the image budget allows
            patches = (max_pixels or image_budget_pixels(model_dir)) // vision.patch_size ** 2
        layers = getattr(vision, "num_hidden_layers", None) or vision.depth
        shape |= {"vision_hidden": vision.hidden_size,
                  "vision_layers": layers + getattr(vision, "num_global_layers", 0),
                  "vision_tokens": patches * getattr(vision, "max_num_tiles", 1)}
    return ModelShape(**shape)


def model_states(shape: ModelShape, layout: Layout) -> tuple[int, int]:
    """(GPU bytes, CPU bytes per node) of weights, gradients and optimizer states; DeepSpeed's estimators
    for full fine-tuning under ZeRO-2/3 (imported there only: DDP and LoRA need no DeepSpeed installed).
    """
    gpus = layout.gpus_per_node * layout.nodes
    if layout.finetuning == "full" and layout.zero_stage == 3:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
            shape.parameters, shape.largest_layer, layout.gpus_per_node, layout.nodes,
            cpu_offload=layout.offload_optimizer, cpu_offload_params=layout.offload_params)
        return gpu, cpu
    if layout.finetuning == "full" and layout.zero_stage == 2:
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

        cpu, gpu = estimate_zero2_model_states_mem_needs(shape.parameters, layout.gpus_per_node, layout.nodes,
                                                          cpu_offload=layout.offload_optimizer)
        return gpu, cpu
    trained = shape.parameters if layout.finetuning == "full" else shape.lora_parameters
    weights = BYTES_16BIT * shape.parameters / (gpus if layout.zero_stage == 3 else 1)
    states = BYTES_PER_TRAINED_PARAMETER * trained / (gpus if layout.zero_stage else 1)
    return int(weights + states), 0


def activations(shape: ModelShape, layout: Layout) -> int:
    """Bytes of the activations one micro-batch keeps for its backward pass (module docstring)."""
    def stack(tokens: int, hidden: int, layers: int) -> int:
        if layout.gradient_checkpointing:
            return tokens * hidden * (CHECKPOINTED_BYTES_PER_LAYER * layers + ACTIVATION_BYTES_PER_LAYER)
        return tokens * hidden * ACTIVATION_BYTES_PER_LAYER * layers

    tokens = layout.rows * layout.sequence_length
    total = stack(tokens, shape.hidden, shape.layers) + tokens * shape.vocabulary * LOGIT_BYTES
    if shape.vision_tokens and not layout.freeze_vision:
        total += stack(layout.rows * shape.vision_tokens, shape.vision_hidden, shape.vision_layers)
    return total


def plan(shape: ModelShape, layout: Layout) -> MemoryPlan:
    """The memory plan of ``shape`` trained in ``layout``."""
    gpu, cpu = model_states(shape, layout)
    return MemoryPlan(gpu, activations(shape, layout), cpu, layout.describe())


def alternatives(layout: Layout) -> list[tuple[str, Layout]]:
    """Settings that need less memory per GPU, in the order a user would try them."""
    options = []
    if not layout.gradient_checkpointing:
        options.append(("gradient_checkpointing: true", dataclasses.replace(layout, gradient_checkpointing=True)))
    lean = dataclasses.replace(layout, gradient_checkpointing=True)
    if layout.zero_stage < 3:
        options.append(("deepspeed: configs/deepspeed/zero3.json", dataclasses.replace(lean, zero_stage=3)))
    if not layout.offload_optimizer:
        options.append(("deepspeed: configs/deepspeed/zero3_offload.json",
                        dataclasses.replace(lean, zero_stage=3, offload_optimizer=True, offload_params=True)))
    for gpus in (8, 16, 32, 64):
        if gpus > layout.gpus_per_node * layout.nodes:
            nodes = max(1, gpus // max(layout.gpus_per_node, 8))
            options.append((f"{gpus} GPUs ({min(gpus, 8)} per node x {nodes} node{'s' if nodes > 1 else ''}) "
                            "with configs/deepspeed/zero3.json",
                            dataclasses.replace(lean, zero_stage=3, gpus_per_node=min(gpus, 8), nodes=nodes)))
    if layout.finetuning == "full":
        options.append(("finetuning: lora", dataclasses.replace(lean, finetuning="lora")))
    if layout.batch_size > 1:
        options.append(("batch_size: 1 (grad_accum up to keep the global batch)",
                        dataclasses.replace(lean, batch_size=1)))
    return options


def check_fits(shape: ModelShape, layout: Layout, gpu_bytes: int) -> MemoryPlan:
    """The plan, or :class:`ConfigError` when it needs more than :data:`HEADROOM` of ``gpu_bytes``,
    naming the first alternative setting that fits.
    """
    needed = plan(shape, layout)
    budget = HEADROOM * gpu_bytes
    if needed.per_gpu <= budget:
        return needed
    planned = ((name, plan(shape, other)) for name, other in alternatives(layout))
    if fitting := next(((name, other) for name, other in planned if other.per_gpu <= budget), None):
        name, other = fitting
        cpu = f" (its offloaded states need {other.cpu_per_node / GiB:.0f} GiB of CPU memory per node)" \
            if other.cpu_per_node else ""
        advice = f"; would fit: {name}, {other.per_gpu / GiB:.1f} GiB per GPU{cpu}"
    else:
        advice = "; no single change fits: use more GPUs or a smaller model"
    raise ConfigError(f"{needed.line()} exceeds {HEADROOM:.0%} of the GPU's {gpu_bytes / GiB:.0f} GiB{advice}")


def layout_of(settings, gpus_per_node: int, nodes: int, sequence_length: int, rows_per_example: int) -> Layout:
    """The layout of ``settings`` (training settings, or :class:`PlanMemoryConfig`: the same field names)."""
    return Layout(finetuning=settings.finetuning, **deepspeed_layout(settings.deepspeed), gpus_per_node=gpus_per_node,
                  nodes=nodes, sequence_length=sequence_length, batch_size=settings.batch_size,
                  rows_per_example=rows_per_example, gradient_checkpointing=settings.gradient_checkpointing,
                  freeze_vision=settings.freeze_vision)


def plan_training_step(model_dir: str | Path, settings, sequence_length: int, rows_per_example: int) -> MemoryPlan:
    """Plan the step of ``settings`` (a :class:`~sherlock.training.settings.TrainSettings`) on this job's GPUs,
    print it, and on GPUs refuse what does not fit (:func:`check_fits`) before the model is loaded.
    """
    import torch

    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    layout = layout_of(settings, local, max(1, distributed.world_size() // local), sequence_length, rows_per_example)
    shape = model_shape(model_dir, settings.lora_target, settings.lora_r, settings.max_pixels)
    result = (check_fits(shape, layout, torch.cuda.get_device_properties(distributed.device()).total_memory)
              if torch.cuda.is_available() else plan(shape, layout))
    if distributed.is_main():
        print(result.line(), file=sys.stderr)
    return result


@dataclass(kw_only=True)
class PlanMemoryConfig:
    """``sherlock plan-memory``: one training step's memory per GPU, and whether it fits."""

    model: str = help_field(help="checkpoint directory (only its config.json is read), e.g. "
                                 "configs/models/llama-3.2-11b-vision")
    finetuning: str = help_field("full", "full or lora")
    lora_r: int = help_field(8, "LoRA rank")
    deepspeed: str | None = help_field(None, "DeepSpeed JSON config (none: DDP)")
    gpus_per_node: int = help_field(1, "GPUs (ranks) per node")
    nodes: int = help_field(1, "nodes")
    gpu_memory_gb: float = help_field(80.0, "memory of one GPU in GB (10^9 bytes, as GPUs are sold)")
    sequence_length: int = help_field(2048, "longest sequence of a micro-batch, in tokens")
    batch_size: int = help_field(1, "examples or pairs per micro-batch on one GPU")
    rows_per_example: int = help_field(1, "sequences per example (Sherlock preference pairs: up to 10, 8 unique)")
    gradient_checkpointing: bool = help_field(False, "recompute activations in the backward pass")
    freeze_vision: bool = help_field(False, "freeze the vision tower")
    max_pixels: int | None = help_field(None, "most pixels of one image, for a tower without a fixed image size "
                                              "(Qwen's max_pixels; unset: the checkpoint's processor's)")


def run_plan_memory(config: PlanMemoryConfig) -> dict:
    """The plan of ``config`` in GiB, and either ``fits: true`` or the refusal with what would fit."""
    layout = layout_of(config, config.gpus_per_node, config.nodes, config.sequence_length, config.rows_per_example)
    shape = model_shape(config.model, lora_r=config.lora_r, max_pixels=config.max_pixels)
    needed = plan(shape, layout)
    result = {"layout": needed.description, "parameters": shape.parameters,
              "per_gpu_gib": round(needed.per_gpu / GiB, 1), "model_states_gib": round(needed.model_states / GiB, 1),
              "activations_gib": round(needed.activations / GiB, 1),
              "cpu_per_node_gib": round(needed.cpu_per_node / GiB), "fits": True}
    try:
        check_fits(shape, layout, int(config.gpu_memory_gb * 1e9))
    except ConfigError as refusal:
        result |= {"fits": False, "refusal": str(refusal)}
    return result
