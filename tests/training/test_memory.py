"""The memory plan: DeepSpeed's estimator on the paper's model, LoRA counted as PEFT trains it, refusals
that name what would fit, and the plan every training stage prints before it starts."""

from pathlib import Path

import pytest

from sherlock.config import ConfigError
from sherlock.training.memory import (
    GiB,
    Layout,
    PlanMemoryConfig,
    check_fits,
    model_shape,
    plan,
    run_plan_memory,
)
from sherlock.training.settings import deepspeed_layout

REPO = Path(__file__).resolve().parents[2]
PAPER_MODEL = REPO / "configs" / "models" / "llama-3.2-11b-vision"  # Llama-3.2-11B-Vision's config.json
ZERO3_OFFLOAD = REPO / "configs" / "deepspeed" / "zero3_offload.json"


@pytest.fixture(scope="module")
def paper_shape():
    return model_shape(PAPER_MODEL)


def test_parameters_are_counted_as_deepspeed_counts_them(tiny_model_dir):
    """On a real model, DeepSpeed's own count (shared parameters once, the largest module) equals the
    plan's, which counts on the meta device (DeepSpeed's live estimator cannot: every meta tensor has
    data_ptr 0, so its de-duplication would keep one)."""
    from deepspeed.runtime.zero.stage3 import model_to_params

    from sherlock.models.loading import load_vlm

    shape = model_shape(tiny_model_dir)
    assert (shape.parameters, shape.largest_layer) == model_to_params(load_vlm(tiny_model_dir)[0])


def test_the_paper_configuration_gets_deepspeeds_estimate(paper_shape):
    """Llama-3.2-11B-Vision (10.67 B parameters, the published count) under the paper's ZeRO-3 with CPU
    offload on 8 GPUs: the model states are DeepSpeed's estimate, and the step fits 8 x 80 GB."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    assert round(paper_shape.parameters / 1e9, 2) == 10.67
    layout = Layout(**deepspeed_layout(str(ZERO3_OFFLOAD)), gpus_per_node=8, batch_size=4,
                    gradient_checkpointing=True)
    assert (layout.zero_stage, layout.offload_optimizer, layout.offload_params) == (3, True, True)
    cpu, gpu, _ = estimate_zero3_model_states_mem_needs(paper_shape.parameters, paper_shape.largest_layer, 8, 1,
                                                        cpu_offload=True, cpu_offload_params=True)
    planned = plan(paper_shape, layout)
    assert (planned.model_states, planned.cpu_per_node) == (gpu, cpu)
    check_fits(paper_shape, layout, int(80e9))


def test_an_11b_full_fine_tune_on_one_80gb_gpu_is_refused_with_what_would_fit(paper_shape):
    with pytest.raises(ConfigError, match=r"221\.\d GiB per GPU.*exceeds 90% of the GPU's 75 GiB; would fit: "
                                          r"deepspeed: configs/deepspeed/zero3_offload.json"):
        check_fits(paper_shape, Layout(), int(80e9))
    result = run_plan_memory(PlanMemoryConfig(model=str(PAPER_MODEL), gpus_per_node=8, deepspeed=str(
        REPO / "configs" / "deepspeed" / "zero3.json"), gradient_checkpointing=True))
    assert result["fits"] and result["model_states_gib"] == pytest.approx(
        (4 * paper_shape.largest_layer + 18 * paper_shape.parameters / 8) / GiB, abs=0.1)


def test_lora_is_counted_as_peft_trains_it(tiny_model_dir):
    """The plan's LoRA parameters (r × (in + out) of every targeted linear layer) are PEFT's trainable ones."""
    from sherlock.models.loading import load_vlm
    from sherlock.training.settings import TrainSettings
    from sherlock.training.setup import prepare_model

    settings = TrainSettings(finetuning="lora", lora_r=4)
    model = prepare_model(load_vlm(tiny_model_dir)[0], settings)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert model_shape(tiny_model_dir, settings.lora_target, settings.lora_r).lora_parameters == trainable > 0


def test_the_plan_shrinks_with_what_the_docs_say_shrinks_it(paper_shape):
    """Each lever lowers the estimate: checkpointing the activations, ZeRO-3 across 8 GPUs, LoRA, a frozen tower."""
    base = Layout(batch_size=4, sequence_length=2048)
    steps = [base, Layout(batch_size=4, sequence_length=2048, gradient_checkpointing=True)]
    assert plan(paper_shape, steps[1]).activations < plan(paper_shape, steps[0]).activations
    sharded = Layout(zero_stage=3, gpus_per_node=8)
    replicated = Layout(zero_stage=2, gpus_per_node=8)
    assert plan(paper_shape, sharded).model_states < plan(paper_shape, replicated).model_states
    assert plan(paper_shape, Layout(finetuning="lora")).model_states < plan(paper_shape, Layout()).model_states
    assert plan(paper_shape, Layout(freeze_vision=True)).activations < plan(paper_shape, Layout()).activations


@pytest.mark.parametrize("directory, parameters, patch", [("qwen2.5-vl-7b-instruct", 8_292_166_656, 14),
                                                          ("qwen3-vl-8b-instruct", 8_767_123_696, 16)])
def test_qwen_is_counted_with_its_published_parameters_and_its_image_budget(directory, parameters, patch, tmp_path):
    """Qwen2.5-VL-7B / Qwen3-VL-8B from their published configs: the published parameter counts; the
    tower's tokens are the patches the image budget allows (the processor's, or ``max_pixels``); a
    checkpoint without a processor to read one from is refused, not guessed."""
    import shutil

    model = REPO / "configs" / "models" / directory
    own, budgeted = model_shape(model), model_shape(model, max_pixels=1280 * (2 * patch) ** 2)
    assert own.parameters == budgeted.parameters == parameters
    assert budgeted.vision_tokens == 4 * 1280 and own.vision_tokens > 10 * budgeted.vision_tokens
    shutil.copy(model / "config.json", tmp_path / "config.json")
    with pytest.raises(ConfigError, match="no image_size and no processor config"):
        model_shape(tmp_path)
