"""Every model family through the project's own batching (golden tests).

The preference trainer builds its batches itself (10 sequences per pair, prompts continued with
response suffixes, deduplicated, right-padded, run in length buckets), which is where VLM preference
trainers lose the image–sequence alignment (TRL #2660) or a family's per-token inputs. Each test takes
a tiny checkpoint of each family and compares that path with the checkpoint's own forward pass on
the processor's encoding of the whole text, one sequence at a time.
"""

import dataclasses

import pytest
import torch

from sherlock.chat import prompt_turns
from sherlock.data.preferences import read_pairs
from sherlock.data.schema import open_image
from sherlock.models.families import FAMILIES, TOKEN_KEYS
from sherlock.models.loading import load_vlm
from sherlock.training.packing import full_row_logps, packed_logps, packs_contexts, sequence_logps
from sherlock.training.sequences import PreferenceCollator, PreferenceDataset, pair_sequences

# float32 on CPU; the batched path pads, buckets and projects through the head under its own kernel calls
TOLERANCE = {"rel": 1e-4, "abs": 1e-3}


def reference_logps(model, processor, pair, image, end_of_turn: str) -> list[float]:
    """log π(suffix + end of turn | prompt, prefix) of each of the pair's 10 sequences: the processor
    encodes the whole text (so its per-token outputs cover the suffix as it makes them), the model's own
    forward gives the logits."""
    values = []
    for prompt, prefix, suffix in pair_sequences(pair):
        context = processor.apply_chat_template(prompt_turns(prompt, pair.context), add_generation_prompt=True) + prefix
        context_ids = processor(images=[[image]], text=[context], return_tensors="pt")["input_ids"][0]
        whole = processor(images=[[image]], text=[context + suffix + end_of_turn], return_tensors="pt")
        suffix_ids = processor.tokenizer(suffix + end_of_turn, add_special_tokens=False)["input_ids"]
        assert whole["input_ids"][0].tolist() == context_ids.tolist() + suffix_ids, "suffix tokenised apart"
        with torch.no_grad():
            logits = model(**whole).logits[0, :-1].float()
        targets = whole["input_ids"][0, 1:]
        token_logps = torch.log_softmax(logits, -1).gather(-1, targets[:, None])[:, 0]
        values.append(token_logps[len(context_ids) - 1:].sum().item())
    return values


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family_model(request, family_model_dirs):
    model, processor = load_vlm(family_model_dirs[request.param], dtype=torch.float32)
    return request.param, model.eval(), processor


def test_the_batched_bucketed_padded_logps_equal_one_forward_per_sequence(family_model, preference_dir):
    """The second pair is a follow-up question: its sequences come after an earlier turn."""
    name, model, processor = family_model
    pairs = read_pairs(preference_dir)[:3]
    pairs[1] = dataclasses.replace(pairs[1], context=((pairs[0].question, pairs[0].chosen),))
    dataset = PreferenceDataset(pairs, preference_dir, processor)
    keys = set(dataset[0]["sequences"][0]) & set(TOKEN_KEYS)
    assert keys == set(FAMILIES[name].token_keys), "the family's per-token inputs travel with each sequence"
    batch = PreferenceCollator(processor.tokenizer.pad_token_id)([dataset[i] for i in range(3)])
    with torch.no_grad():
        batched = sequence_logps(model, batch)
    for row, pair in enumerate(pairs):
        expected = reference_logps(model, processor, pair, open_image(preference_dir, pair), dataset.end_of_turn)
        assert batched[row].tolist() == pytest.approx(expected, **TOLERANCE), (name, row)
    alone = reference_logps(model, processor, dataclasses.replace(pairs[1], context=()),
                            open_image(preference_dir, pairs[1]), dataset.end_of_turn)
    assert max(abs(a - b) for a, b in zip(alone, batched[1].tolist())) > 0.01, "the earlier turn reaches the model"


def test_each_sequence_sees_its_own_image(family_model, preference_dir):
    """Two pairs' images swapped: the batched log-probs change, and equal the reference with the swap."""
    name, model, processor = family_model
    pairs = read_pairs(preference_dir)[:2]
    dataset = PreferenceDataset(pairs, preference_dir, processor)
    items = [dataset[0], dataset[1]]
    collate = PreferenceCollator(processor.tokenizer.pad_token_id)
    swapped = [item | {"image_inputs": other["image_inputs"]} for item, other in zip(items, items[::-1])]
    with torch.no_grad():
        straight, crossed = sequence_logps(model, collate(items)), sequence_logps(model, collate(swapped))
    # summed log-probs of a random tiny model: the image moves them by tenths, float noise by ~1e-4
    assert (straight - crossed).abs().max() > 0.01, f"{name}: the image does not reach the log-probs"
    images = [open_image(preference_dir, pair) for pair in pairs]
    expected = reference_logps(model, processor, pairs[0], images[1], dataset.end_of_turn)
    assert crossed[0].tolist() == pytest.approx(expected, **TOLERANCE)


def _logps_and_gradients(model, batch, rows) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    logps = rows(model, batch)
    logps.sum().backward()
    gradients = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return logps.detach(), gradients


def test_packed_contexts_give_the_whole_rows_log_probs_and_gradients(family_model, preference_dir):
    """Each context (prompt + prefix) run once, packed with the suffixes that continue it: every row's
    log-prob and every parameter's gradient are those of whole-row forward passes."""
    name, model, processor = family_model
    dataset = PreferenceDataset(read_pairs(preference_dir)[:3], preference_dir, processor)
    batch = PreferenceCollator(processor.tokenizer.pad_token_id)([dataset[i] for i in range(3)])
    assert packs_contexts(model)
    assert len(set(batch["context"].tolist())) < len(batch["context"]), "the correction sequences share contexts"
    whole, whole_gradients = _logps_and_gradients(model, batch, full_row_logps)
    packed, packed_gradients = _logps_and_gradients(model, batch, packed_logps)
    assert packed.tolist() == pytest.approx(whole.tolist(), **TOLERANCE), name
    assert set(packed_gradients) == set(whole_gradients) and whole_gradients, name
    for parameter, gradient in whole_gradients.items():  # float32: summation order differs, ~1e-5 relative
        difference = (packed_gradients[parameter] - gradient).abs().max()
        assert difference <= 1e-4 * gradient.abs().max() + 1e-7, (name, parameter, float(difference))


def test_packing_holds_under_sliding_windows_and_checkpointing_and_yields_to_flash_attention(family_model_dirs,
                                                                                           preference_dir):
    """Packed rows keep each token's position, which Gemma 3's sliding window counts (a 32-token window,
    shorter than the rows), and are ordinary forward passes, which activation checkpointing recomputes
    (Mllama, training mode): the log-probs equal each sequence's own forward pass. An attention that
    takes no 4-D mask (FlashAttention 2) gets whole rows."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    directory = family_model_dirs["gemma3"]
    config = AutoConfig.from_pretrained(directory, local_files_only=True)
    config.text_config.sliding_window = 32
    windowed = AutoModelForImageTextToText.from_pretrained(directory, config=config, dtype=torch.float32,
                                                           local_files_only=True).eval()
    checkpointed = load_vlm(family_model_dirs["mllama"], dtype=torch.float32)[0].train()
    checkpointed.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for name, model in (("gemma3", windowed), ("mllama", checkpointed)):
        processor = load_vlm(family_model_dirs[name])[1]
        pairs = read_pairs(preference_dir)[:2]
        dataset = PreferenceDataset(pairs, preference_dir, processor)
        batch = PreferenceCollator(processor.tokenizer.pad_token_id)([dataset[0], dataset[1]])
        assert packs_contexts(model), name
        logps = sequence_logps(model, batch).detach()
        for row, pair in enumerate(pairs):
            expected = reference_logps(model, processor, pair, open_image(preference_dir, pair), dataset.end_of_turn)
            assert logps[row].tolist() == pytest.approx(expected, **TOLERANCE), name
    windowed.config.get_text_config()._attn_implementation = "flash_attention_2"  # not installed: the setting alone
    assert not packs_contexts(windowed)


def test_build_tiny_makes_each_family_from_the_command_line(tmp_path, synthetic_data):
    """``sherlock build-tiny --family NAME``: the family's real model and processor classes, the stage tags
    atomic, only the assistant turn marked for the loss, generation through the project's ``generate``."""
    from sherlock.cli import main
    from sherlock.generation import DecodingConfig, generate
    from sherlock.models.tiny import STAGE_TAGS

    corpus = synthetic_data.path
    expected = {"mllama": ("MllamaForConditionalGeneration", "MllamaProcessor"),
                "gemma3": ("Gemma3ForConditionalGeneration", "Gemma3Processor"),
                "idefics3": ("Idefics3ForConditionalGeneration", "Idefics3Processor")}
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


PART = {"vision": ("vision_model", "vision_tower"), "projector": ("multi_modal_projector", "connector"),
        "language": ("language_model", "text_model", "lm_head")}


def part_of(parameter: str) -> str:
    return next(part for part, names in PART.items() if any(f".{n}." in f".{parameter}" for n in names))


@pytest.mark.parametrize("frozen", ["vision", "projector", "language"])
def test_freezing_touches_exactly_that_part(fresh_model, frozen):
    """``freeze_<part>: true`` turns off every parameter of that part of the family's layout and no other."""
    from sherlock.training.setup import TrainSettings, prepare_model

    name, model = fresh_model
    model = prepare_model(model, TrainSettings(**{f"freeze_{frozen}": True}))
    parts = {parameter: part_of(parameter) for parameter, _ in model.named_parameters()}
    assert set(parts.values()) == set(PART), f"{name}: every parameter is in one of the three parts"
    for parameter, tensor in model.named_parameters():
        assert tensor.requires_grad is (parts[parameter] != frozen), (name, parameter)


def test_lora_adapts_exactly_the_language_models_projections(fresh_model):
    """The default LoRA target: adapters on every attention and MLP projection of the language model
    (cross-attention layers included), none in the vision tower or the projector; only they train."""
    from sherlock.training.setup import TrainSettings, prepare_model

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
    from sherlock.generation import DecodingConfig, generate
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
