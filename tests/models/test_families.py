"""Every model family through the command line, the stages, freezing and LoRA (the golden log-prob tests
of the preference batch: tests/training/test_packing.py)."""


import pytest
import torch

from sherlock.data.preferences import read_pairs
from sherlock.data.schema import open_image
from sherlock.models.families import FAMILIES
from sherlock.models.loading import load_vlm


def test_build_tiny_makes_each_family_from_the_command_line(tmp_path, synthetic_data):
    """``sherlock build-tiny --family NAME``: the family's real model and processor classes, the stage tags
    atomic, only the assistant turn marked for the loss, generation through the project's ``generate``."""
    from sherlock.cli import main
    from sherlock.decoding import DecodingConfig
    from sherlock.generation import generate
    from sherlock.models.tiny import STAGE_TAGS

    corpus = synthetic_data.path
    expected = {"mllama": ("MllamaForConditionalGeneration", "MllamaProcessor"),
                "gemma3": ("Gemma3ForConditionalGeneration", "Gemma3Processor"),
                "idefics3": ("Idefics3ForConditionalGeneration", "Idefics3Processor"),
                "qwen2_5_vl": ("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor"),
                "qwen3_vl": ("Qwen3VLForConditionalGeneration", "Qwen3VLProcessor")}
    assert set(expected) == set(FAMILIES)
    records = synthetic_data.records[:2]
    images = [open_image(synthetic_data.image_root, r) for r in records]
    for name, classes in expected.items():
        main(["build-tiny", "--family", name, "--output", str(tmp_path / name), "--corpus", str(corpus),
              "--vocab-size", "500"])
        model, processor = load_vlm(tmp_path / name)
        assert (type(model).__name__, type(processor).__name__) == classes
        tokenizer = processor.tokenizer
        assert all(len(tokenizer(tag, add_special_tokens=False)["input_ids"]) == 1 for tag in STAGE_TAGS)
        messages = [{"role": "user", "content": [{"type": "text", "text": "How many?"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": "<CONCLUSION>2</CONCLUSION>"}]}]
        out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
        trained = tokenizer.decode([i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m])
        assert trained == "<CONCLUSION>2</CONCLUSION>" + tokenizer.eos_token, name
        outputs = generate(model, processor, [r.question for r in records], images,
                           config=DecodingConfig(max_new_tokens=6, temperature=0.0))
        assert len(outputs) == 2 and all(isinstance(o, str) for o in outputs), name
    with pytest.raises(SystemExit, match="unknown gemma3 preset 'huge'"):
        main(["build-tiny", "--family", "gemma3", "--preset", "huge", "--output", str(tmp_path / "x"),
              "--corpus", str(corpus)])


@pytest.mark.parametrize("name", sorted(set(FAMILIES) - {"mllama"}))  # Mllama: every stage test
def test_sft_and_preference_training_run_on_the_family(name, family_model_dirs, subset_dir, preference_dir, tmp_path):
    """Sherlock-SFT's trainer (TRL, assistant-only loss) and the Sherlock preference trainer, one family's
    checkpoint each: the first preference step at π = π_ref has the loss L_SC + α·L_DPO = 2 + 0.25·log 2."""
    import json
    import math

    from sherlock.stages.sft import SFTStageConfig, run_sft
    from sherlock.stages.train_preferences import TrainPreferencesConfig, run_train_preferences

    sft = run_sft(SFTStageConfig(model=str(family_model_dirs[name]), data=str(subset_dir), output=str(tmp_path / "sft"),
                                 max_steps=2, batch_size=2, logging_steps=1))
    sft_log = json.loads((sft / "trainer_state.json").read_text())["log_history"]
    assert [entry["loss"] for entry in sft_log if "loss" in entry][0] > 0
    trained = run_train_preferences(TrainPreferencesConfig(
        model=str(sft), data=str(preference_dir), output=str(tmp_path / "pref"), max_steps=1, batch_size=2,
        logging_steps=1, reference_cache=str(tmp_path / "cache")))
    log = json.loads((trained / "trainer_state.json").read_text())["log_history"]
    assert log[0]["loss"] == pytest.approx(2 + 0.25 * math.log(2), abs=1e-3)
    assert load_vlm(trained)[0].__class__.__name__ == type(load_vlm(family_model_dirs[name])[0]).__name__


@pytest.fixture(params=sorted(FAMILIES))
def fresh_model(request, family_model_dirs):
    return request.param, load_vlm(family_model_dirs[request.param], dtype=torch.float32)[0]


# the projector first: Qwen-VL nests it ("merger", Qwen3-VL's DeepStack mergers) inside its tower "visual"
PART = {"projector": ("multi_modal_projector", "connector", "merger", "deepstack_merger_list"),
        "vision": ("vision_model", "vision_tower", "visual"), "language": ("language_model", "text_model", "lm_head")}


def part_of(parameter: str) -> str:
    return next(part for part, names in PART.items() if any(f".{n}." in f".{parameter}" for n in names))


@pytest.mark.parametrize("frozen", ["vision", "projector", "language"])
def test_freezing_touches_exactly_that_part(fresh_model, frozen):
    """``freeze_<part>: true`` turns off every parameter of that part of the family's layout and no other."""
    from sherlock.training.settings import TrainSettings
    from sherlock.training.setup import prepare_model

    name, model = fresh_model
    model = prepare_model(model, TrainSettings(**{f"freeze_{frozen}": True}))
    parts = {parameter: part_of(parameter) for parameter, _ in model.named_parameters()}
    assert set(parts.values()) == set(PART), f"{name}: every parameter is in one of the three parts"
    for parameter, tensor in model.named_parameters():
        assert tensor.requires_grad is (parts[parameter] != frozen), (name, parameter)


def test_lora_adapts_exactly_the_language_models_projections(fresh_model):
    """The default LoRA target: adapters on every attention and MLP projection of the language model
    (cross-attention layers included), none in the vision tower or the projector; only they train."""
    from sherlock.training.settings import TrainSettings
    from sherlock.training.setup import prepare_model

    name, model = fresh_model
    projections = {module for module, _ in model.named_modules()
                   if {"language_model", "text_model"} & set(module.split(".")) and module.rsplit(".", 1)[-1] in
                   ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")}
    assert projections, name
    model = prepare_model(model, TrainSettings(finetuning="lora"))
    trainable = {parameter for parameter, tensor in model.named_parameters() if tensor.requires_grad}
    adapted = {parameter.split(".lora_")[0].removeprefix("base_model.model.") for parameter in trainable}
    assert all(".lora_A." in p or ".lora_B." in p for p in trainable), name
    assert adapted == projections, name


@pytest.mark.parametrize("name", sorted(set(FAMILIES) - {"mllama"}))  # Mllama: every stage test
def test_every_generating_stage_and_evaluation_run_on_the_family(name, family_model_dirs, subset_dir, tmp_path,
                                                                register_judge):
    """On one family's checkpoint: Y^l (seeded: the same twice), offline pairs, an online iteration, SCL's
    review turn, STIC pairs and evaluation with a correction round (serving: tests/serving)."""
    from sherlock.data.llava_cot import load_data
    from sherlock.data.schema import read_jsonl
    from sherlock.decoding import DecodingConfig
    from sherlock.generation import generate
    from sherlock.prompts import SCL_REVIEW_PROMPTS
    from sherlock.stages.build_preferences import BuildPreferencesConfig, run_build_preferences
    from sherlock.stages.evaluate import EvaluateConfig, run_evaluate
    from sherlock.stages.online import OnlineConfig, run_online_iteration
    from sherlock.stages.sample_rejected import SampleRejectedConfig, run_sample_rejected
    from sherlock.stages.scl_pairs import review_conversations
    from sherlock.stages.stic_pairs import STICPairsConfig, run_stic_pairs

    model_dir, data = str(family_model_dirs[name]), str(subset_dir)

    def rejected(output: str) -> list[dict]:
        return read_jsonl(run_sample_rejected(SampleRejectedConfig(model=model_dir, data=data, output=str(
            tmp_path / output), max_new_tokens=8, seed=1)))

    samples = rejected("y1")
    assert len(samples) == 16 and samples == rejected("y2")
    pairs = read_pairs(run_build_preferences(BuildPreferencesConfig(
        model=model_dir, data=data, output=str(tmp_path / "pairs"), max_new_tokens=8)).parent)
    assert pairs and all(pair.prefix_w == pair.prefix_l for pair in pairs)
    register_judge("always", "return True")
    load_vlm(run_online_iteration(OnlineConfig(model=model_dir, data=data, output=str(tmp_path / "online"), num_pairs=2,
                                               judge="always", truncation_steps="1", max_new_tokens=8, max_steps=1,
                                               batch_size=2)))
    model, processor = load_vlm(model_dir)
    review = review_conversations(["Q?"], ["first answer"], 1, [()])
    text = processor.apply_chat_template(review[0], add_generation_prompt=True)
    assert text.index("Q?") < text.index("first answer") < text.index(SCL_REVIEW_PROMPTS[1])
    image = open_image(subset_dir, load_data(subset_dir).records[0])
    assert len(generate(model, processor, review, [image], config=DecodingConfig(max_new_tokens=6))) == 1
    assert read_pairs(run_stic_pairs(STICPairsConfig(model=model_dir, data=data, output=str(tmp_path / "stic"),
                                                     temperature=0.0, max_new_tokens=6)).parent)
    metrics = run_evaluate(EvaluateConfig(model=model_dir, benchmarks=f"llava_cot={data}", output=str(
        tmp_path / "eval"), limit=4, correction_rounds=1, max_new_tokens=8, greedy_direct=False, blank_image=False))
    assert len(metrics["benchmarks"]["llava_cot"]["rounds"]) == 2


@pytest.mark.parametrize("name", sorted(set(FAMILIES) - {"mllama"}))  # Mllama: tests/stages/test_stages.py
def test_lora_sft_merges_into_the_language_model_only(name, family_model_dirs, subset_dir, tmp_path):
    """The LoRA stage end to end on the family: trained adapters merged into a plain checkpoint that
    changed the language model and nothing else."""
    from sherlock.stages.sft import SFTStageConfig, run_sft

    base = load_vlm(family_model_dirs[name], dtype=torch.float32)[0].state_dict()
    out = run_sft(SFTStageConfig(model=str(family_model_dirs[name]), data=str(subset_dir),
                                 output=str(tmp_path / "lora"), finetuning="lora", lora_r=4, max_steps=3,
                                 learning_rate=1e-2, warmup_ratio=0.0))
    assert not list(out.glob("adapter_*")), "adapters are merged into a plain checkpoint"
    trained = load_vlm(out, dtype=torch.float32)[0].state_dict()
    assert set(trained) == set(base)
    changed = {part_of(key) for key in base if not torch.equal(base[key], trained[key])}
    assert changed == {"language"}, (name, changed)


def test_the_image_budget_sets_qwens_image_tokens_and_is_refused_where_images_have_a_fixed_size(family_model_dirs,
                                                                                                tmp_path):
    """``max_pixels`` / ``min_pixels`` reach Qwen's processor (an image of 144² pixels: 9 image tokens at
    the tiny model's 72² budget, 4 at 48²); a processor that sizes images otherwise refuses a budget
    rather than ignoring it; a budget that is none is refused before anything loads."""
    from PIL import Image

    from sherlock.config import ConfigError
    from sherlock.image_budget import ImageBudget
    from sherlock.models.loading import load_processor

    image = Image.new("RGB", (144, 144), (200, 0, 0))
    for name in ("qwen2_5_vl", "qwen3_vl"):
        def image_tokens(processor):
            text = processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q?"}]}])
            ids = processor(images=[[image]], text=[text], return_tensors="pt")["input_ids"]
            return (ids == processor.image_token_id).sum().item()

        assert image_tokens(load_processor(family_model_dirs[name])) == 9, name
        budget = ImageBudget(min_pixels=48 * 48, max_pixels=48 * 48).image_budget()
        assert image_tokens(load_processor(family_model_dirs[name], budget)) == 4, name
    for name in ("mllama", "gemma3", "idefics3"):
        with pytest.raises(ConfigError, match="takes no pixel budget"):
            load_processor(family_model_dirs[name], {"max_pixels": 4096})
    with pytest.raises(ConfigError, match="exceeds max_pixels"):
        ImageBudget(min_pixels=4096, max_pixels=1024).image_budget()
