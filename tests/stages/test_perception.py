"""The perception pre-training stage (the embedded base model) and the committed checkpoint."""

import json
import shutil

import pytest
import torch

from sherlock import models
from sherlock.data.synthetic import PERCEPTION_FAMILIES, READING_FAMILIES, make_item, make_perception_item
from sherlock.diagnostics import caption_shapes
from sherlock.models import EMBEDDED_BASE_DIGEST, embedded_base
from sherlock.models.loading import load_vlm
from sherlock.models.tiny import build_tiny_vlm
from sherlock.stages.pretrain_perception import PERCEPTION_FILE, PretrainPerceptionConfig, run_pretrain_perception
from sherlock.storage import IntegrityError, directory_digest


def test_perception_items_are_deterministic_cover_every_family_and_never_repeat_task_items():
    drawn = [make_perception_item(0, k) for k in range(60)]
    assert {r.tier for r, _ in drawn} == {f.__name__.strip("_") for f in PERCEPTION_FAMILIES}
    again = make_perception_item(0, 7)
    assert again[0] == drawn[7][0] and again[1].tobytes() == drawn[7][1].tobytes()
    describe = next(r for r, _ in drawn if r.tier == "describe")
    assert caption_shapes(describe.response) and describe.response.startswith("The image shows")
    task_images = {make_item(0, k, "hard")[1].tobytes() for k in range(60)}
    assert not task_images & {image.tobytes() for _, image in drawn}


def test_reading_items_describe_the_scene_then_answer_from_that_description():
    drawn = [make_perception_item(0, k, families=READING_FAMILIES) for k in range(80)]
    assert {r.tier for r, _ in drawn} == {f.__name__.strip("_") for f in READING_FAMILIES}
    for record, _ in drawn:
        if record.tier.startswith("describe_then"):
            described = record.response.split(". ", 1)[0] + "."
            assert caption_shapes(described) and record.response.startswith(described)
        if record.tier == "describe_then_colour":  # every listed shape is one of the described shapes
            colour = record.question.split()[-2]
            listed = record.response.split(f"The {colour} shapes are: ")[1]
            described_names = {" ".join(shape) for shape in caption_shapes(described).values()}
            assert listed == "none." or all(n.split(" at ")[0].removeprefix("the ") in described_names
                                            for n in listed.rstrip(".").split(", "))
        if record.tier == "pick_option":
            value, letter = record.response.removesuffix(".").split(" is option ")
            assert f"\n{letter}. {value}\n" in record.question + "\n"


def test_pretraining_trains_scores_held_out_items_and_rejects_bad_settings(tmp_path):
    model_dir = run_pretrain_perception(PretrainPerceptionConfig(output=str(tmp_path / "base"), preset="tiny",
                                                                 num_items=24, max_steps=2, batch_size=4,
                                                                 validation_items=5))
    scores = json.loads((tmp_path / "base" / PERCEPTION_FILE).read_text())
    assert scores["num_items"] == 5 and all(0.0 <= v <= 1.0 for k, v in scores.items() if k != "num_items")
    trained, _ = load_vlm(model_dir)
    initial, _ = load_vlm(tmp_path / "base" / "init")
    assert any(not torch.equal(p, q) for p, q in zip(trained.state_dict().values(), initial.state_dict().values()))
    with pytest.raises(ValueError, match="unknown preset"):
        PretrainPerceptionConfig(output="o", preset="huge").check()
    with pytest.raises(ValueError, match="unknown question families"):
        PretrainPerceptionConfig(output="o", families="perception,copying").check()
    # a second phase continues from the first model (and its tokenizer) on the reading families too
    again = run_pretrain_perception(PretrainPerceptionConfig(output=str(tmp_path / "phase2"), init=str(model_dir),
                                                     families="perception,reading", seed=1, num_items=8, max_steps=1,
                                                     batch_size=4, validation_items=0))
    assert not (tmp_path / "phase2" / "init").exists()
    assert (again / "tokenizer.json").read_bytes() == (model_dir / "tokenizer.json").read_bytes()


def test_position_embeddings_start_at_the_patch_scale(tmp_path, synthetic_corpus):
    """Mllama's N(0, 1/width) positions are ~20x weaker than a random patch embedding; ours match it."""
    model, _ = load_vlm(build_tiny_vlm(tmp_path / "m", synthetic_corpus, preset="embedded", vocab_size=500))
    vision = model.model.vision_model
    positions = vision.gated_positional_embedding.embedding.std().item()
    content = vision.patch_embedding(torch.rand(1, 3, 72, 72) * 4 - 2).std().item()
    assert 0.5 < positions / content < 2.0
    gates = [p.item() for n, p in model.named_parameters() if n.endswith(("gate_attn", "gate_ffn"))]
    assert gates and all(g == 1.0 for g in gates)


def test_committed_base_model_matches_its_digest(tmp_path, monkeypatch):
    assert directory_digest(embedded_base()) == EMBEDDED_BASE_DIGEST
    model, processor = load_vlm(embedded_base())
    assert type(model).__name__ == "MllamaForConditionalGeneration" and processor.tokenizer.chat_template
    # a changed file is an integrity error that names it
    copy = tmp_path / "embedded"
    shutil.copytree(embedded_base(), copy)
    (copy / "config.json").write_text((copy / "config.json").read_text().replace("{", "{ ", 1))
    monkeypatch.setattr(models, "EMBEDDED_BASE", copy)
    with pytest.raises(IntegrityError, match="config.json"):
        embedded_base()
