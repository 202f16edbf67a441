import pytest
import torch

from sherlock.chat import conversation, user_turn
from sherlock.data.schema import open_image
from sherlock.decoding import DecodingConfig
from sherlock.generation import generate
from sherlock.models.loading import CheckpointNotFoundError, load_vlm
from sherlock.models.tiny import STAGE_TAGS, build_tiny_vlm


def test_stage_tags_are_atomic_and_survive_decoding(tiny_tokenizer):
    for tag in STAGE_TAGS:
        assert len(tiny_tokenizer(tag, add_special_tokens=False)["input_ids"]) == 1
    text = "<SUMMARY>count</SUMMARY>"
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tiny_tokenizer.decode(ids, skip_special_tokens=True) == text


def test_chat_template_marks_only_the_assistant_turn(tiny_tokenizer):
    messages = [{"role": "user", "content": "How many?"},
                {"role": "assistant", "content": "<CONCLUSION>2</CONCLUSION>"}]
    out = tiny_tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                             return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    trained = tiny_tokenizer.decode([i for i, m in zip(ids, mask) if m])
    assert trained == "<CONCLUSION>2</CONCLUSION><|eot_id|>"


def test_tiny_model_saves_reloads_and_generates(tiny_model_dir, synthetic_data):
    model, processor = load_vlm(tiny_model_dir)
    assert type(model).__name__ == "MllamaForConditionalGeneration"
    gates = [p.item() for n, p in model.named_parameters() if n.endswith("cross_attn_attn_gate")]
    assert gates and all(g != 0 for g in gates)  # open, so the image reaches the text model

    again, _ = load_vlm(tiny_model_dir)
    for (name, p), (_, q) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(p, q), name

    records = synthetic_data.records[:5]
    images = [open_image(synthetic_data.image_root, r) for r in records]
    config = DecodingConfig(max_new_tokens=12, batch_size=2)
    outputs = generate(model, processor, [r.question for r in records], images, config=config)
    assert len(outputs) == 5 and all(isinstance(o, str) for o in outputs)
    # batched greedy decoding equals one-by-one decoding
    alone = [generate(model, processor, [r.question], [im], config=config)[0] for r, im in zip(records, images)]
    assert outputs == alone

    # a prefix continues the assistant turn: the first new token is the model's argmax after it
    prefix = "<SUMMARY>I will"
    continued = generate(model, processor, [records[0].question], images[:1], prefixes=[prefix], config=config)[0]
    text = processor.apply_chat_template([user_turn(records[0].question)], add_generation_prompt=True) + prefix
    batch = processor(images=[images[:1]], text=[text], return_tensors="pt")
    with torch.no_grad():
        first = model(**batch).logits[0, -1].argmax().item()
    assert continued.startswith(processor.tokenizer.decode([first], skip_special_tokens=True))




def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="config.json missing"):
        load_vlm(tmp_path)


def test_unknown_preset(tmp_path):
    with pytest.raises(ValueError, match="unknown preset"):
        build_tiny_vlm(tmp_path, ["text"], preset="huge")


def test_sft_trains_the_assistant_turn(tiny_model_dir, synthetic_data, tmp_path):
    from sherlock.training.settings import TrainSettings
    from sherlock.training.sft import examples_from_records, sft_dataset, train_sft

    examples = examples_from_records(synthetic_data.records[:64], synthetic_data.image_root)
    model, processor = load_vlm(tiny_model_dir)
    records = synthetic_data.records[:16]
    images = [[open_image(synthetic_data.image_root, r)] for r in records]
    texts = [processor.apply_chat_template(conversation(r.question, r.response)) for r in records]
    batch = processor(images=images, text=texts, padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)

    def loss(m):
        with torch.no_grad():
            return m(**batch, labels=labels).loss.item()

    before = loss(model)
    settings = TrainSettings(learning_rate=3e-3, epochs=3, batch_size=16, logging_steps=1)
    out = train_sft(tiny_model_dir, examples, tmp_path / "sft", settings)
    trained, _ = load_vlm(out)
    assert loss(trained) < before - 0.5
    assert len(sft_dataset(examples)) == 64
    with pytest.raises(ValueError, match="empty"):
        sft_dataset([])


def test_presets_build_the_named_sizes(tmp_path, synthetic_corpus):
    sizes = {}
    for preset in ("tiny", "small"):
        model, _ = load_vlm(build_tiny_vlm(tmp_path / preset, synthetic_corpus, preset=preset, vocab_size=500))
        sizes[preset] = sum(p.numel() for p in model.parameters())
        assert model.config.vision_config.image_size == 72 and model.config.vision_config.max_num_tiles == 1
    assert 2 * sizes["tiny"] < sizes["small"]


def test_mllama_attends_to_every_image_token_whatever_mask_is_passed(tiny_model_dir, synthetic_data):
    """huggingface/transformers#48172 against the unpatched model: with no mask, transformers 5.23's SDPA
    makes Mllama's cross-attention causal over the image (its eager path does not); after
    ``attend_across_images`` (which ``load_vlm`` applies) the two agree. The project's own forward pass
    (the processor's ``cross_attention_mask`` passed, as in training, the reference pass, generation and
    serving) gives the same logits with and without the flag: no result depended on the bug."""
    from transformers import AutoModelForImageTextToText
    from transformers.models.mllama.modeling_mllama import MllamaTextCrossAttention

    from sherlock.models.loading import attend_across_images

    raw = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32,
                                                      local_files_only=True).eval()
    model, processor = load_vlm(tiny_model_dir, dtype=torch.float32)
    record = synthetic_data.records[0]
    text = processor.apply_chat_template(conversation(record.question, None), add_generation_prompt=True)
    inputs = processor(images=[[open_image(synthetic_data.image_root, record)]], text=[text], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(raw(**inputs).logits, model.eval()(**inputs).logits)
    cross = next(m for m in raw.modules() if isinstance(m, MllamaTextCrossAttention))
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, 6, cross.config.hidden_size, generator=generator)
    image = torch.randn(1, 10, cross.config.hidden_size, generator=generator)

    def attend(implementation: str) -> torch.Tensor:
        cross.config._attn_implementation = implementation
        with torch.no_grad():
            return cross(hidden, cross_attention_states=image)[0]

    eager, unpatched = attend("eager"), attend("sdpa")
    assert (eager - unpatched).abs().max() > 1e-3, "transformers fixed #48172: attend_across_images can go"
    layers = raw.config.text_config.cross_attention_layers
    assert attend_across_images(raw) == len(layers) + sum(1 for n, _ in raw.named_modules() if n.endswith(".self_attn")
                                                          and ".vision_model." in f".{n}")
    assert torch.allclose(attend("sdpa"), eager, atol=1e-5)
    assert attend_across_images(model) == 0, "load_vlm has set the flag on every such module"
