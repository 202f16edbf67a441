"""Stage I–III functions on the tiny model: SFT variants, Y^l sampling, preference building, online."""

import json
import random

import pytest
import torch
from PIL import Image

from sherlock.config import ConfigError
from sherlock.data.llava_cot import DataQualityError, load_data
from sherlock.data.preferences import RELEASED_NOISE_RANGE, PreferencePair, draw_perturbation, read_pairs
from sherlock.data.schema import read_jsonl
from sherlock.models.loading import CheckpointNotFoundError, load_vlm
from sherlock.prompts import correction_prompt
from sherlock.reasoning import beta_weight, truncate
from sherlock.stages.build_preferences import reasoning_errors
from sherlock.stages.online import OnlineConfig, load_judge, run_online_iteration, unlabeled_pool
from sherlock.stages.sample_rejected import SampleRejectedConfig, run_sample_rejected
from sherlock.stages.sft import SFTStageConfig, run_sft
from sherlock.training.sft import correction_examples


def _weights(model, part):
    return {n: p.detach().clone() for n, p in model.named_parameters() if f".{part}." in f".{n}"}


def _changed(before, after_model, part):
    after = _weights(after_model, part)
    return any(not torch.equal(before[n], after[n]) for n in before)


def test_sherlock_sft_examples_pair_the_correction_prompt_with_the_gold_response(synthetic_data):
    records = synthetic_data.records[:3]
    rejected = {r.id: f"<SUMMARY>wrong {i}</SUMMARY>" for i, r in enumerate(records)}
    examples = correction_examples(records, rejected, synthetic_data.image_root)
    assert [e.prompt for e in examples] == [correction_prompt(r.question, rejected[r.id]) for r in records]
    assert [e.response for e in examples] == [r.response for r in records]
    with pytest.raises(ValueError, match="no rejected response"):
        correction_examples(records, {}, synthetic_data.image_root)


def test_sherlock_sft_stage_trains_from_the_base_model(tiny_model_dir, subset_dir, tmp_path):
    data = load_data(subset_dir)
    rejected = tmp_path / "rejected.jsonl"
    rejected.write_text("".join(json.dumps({"id": r.id, "rejected": r.response[::-1]}) + "\n" for r in data.records))
    out = run_sft(SFTStageConfig(model=str(tiny_model_dir), data=str(subset_dir), rejected=str(rejected),
                                 output=str(tmp_path / "out"), max_steps=2, batch_size=16, learning_rate=1e-3))
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and (out / "stage_config.yaml").is_file()
    load_vlm(out)


def test_lora_merges_into_the_language_model_only(tiny_model_dir, subset_dir, tmp_path):
    base, _ = load_vlm(tiny_model_dir)
    vision, language = _weights(base, "vision_model"), _weights(base, "language_model")
    out = run_sft(SFTStageConfig(model=str(tiny_model_dir), data=str(subset_dir), output=str(tmp_path / "lora"),
                                 finetuning="lora", lora_r=4, max_steps=3, learning_rate=1e-2, warmup_ratio=0.0))
    assert not list(out.glob("adapter_*")), "adapters are merged into a plain checkpoint"
    trained, _ = load_vlm(out)
    assert not _changed(vision, trained, "vision_model")
    assert _changed(language, trained, "language_model")


def test_lora_initialisation_follows_the_stage_seed(tiny_model_dir):
    """The adapters' random A matrices depend on ``seed`` only, not on what the process drew before."""
    import torch

    from sherlock.training.settings import TrainSettings
    from sherlock.training.setup import prepare_model

    def adapters(seed: int, draws: int) -> dict:
        torch.rand(draws)  # earlier use of the global generator (generation, other stages)
        model = prepare_model(load_vlm(tiny_model_dir)[0], TrainSettings(finetuning="lora", seed=seed))
        return {k: v.clone() for k, v in model.state_dict().items() if "lora_A" in k}

    first, again, other = adapters(0, 1), adapters(0, 1000), adapters(1, 1)
    assert first and all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_freeze_vision_keeps_the_vision_tower(tiny_model_dir, subset_dir, tmp_path):
    base, _ = load_vlm(tiny_model_dir)
    vision, projector = _weights(base, "vision_model"), _weights(base, "multi_modal_projector")
    out = run_sft(SFTStageConfig(model=str(tiny_model_dir), data=str(subset_dir), output=str(tmp_path / "frozen"),
                                 freeze_vision=True, max_steps=2, learning_rate=1e-2, warmup_ratio=0.0))
    trained, _ = load_vlm(out)
    assert not _changed(vision, trained, "vision_model")
    assert _changed(projector, trained, "multi_modal_projector")


def test_sft_stage_rejects_bad_input(tiny_model_dir, tmp_path):
    with pytest.raises(CheckpointNotFoundError):
        run_sft(SFTStageConfig(model=str(tmp_path / "none"), data=str(tmp_path), output=str(tmp_path / "o")))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "data.jsonl").write_text("\n")
    with pytest.raises(DataQualityError, match="no records"):
        run_sft(SFTStageConfig(model=str(tiny_model_dir), data=str(empty), output=str(tmp_path / "o")))




def test_rejected_samples_are_seeded(tiny_model_dir, subset_dir, tmp_path):
    def sample(seed, name):
        config = SampleRejectedConfig(model=str(tiny_model_dir), data=str(subset_dir), output=str(tmp_path / name),
                                      max_new_tokens=16, seed=seed)
        return read_jsonl(run_sample_rejected(config))

    first, again, other = sample(0, "a"), sample(0, "b"), sample(1, "c")
    assert [row["id"] for row in first] == [r.id for r in load_data(subset_dir).records]
    assert first == again and first != other


def test_offline_pairs_share_the_gold_prefix(preference_dir, subset_dir):
    pairs = read_pairs(preference_dir)
    gold = {r.id: r for r in load_data(subset_dir).records}
    stats = json.loads((preference_dir / "stats.json").read_text())
    assert stats["num_pairs"] == len(pairs) and stats["num_pairs"] + stats["dropped_identical"] == len(gold)
    for pair in pairs:
        record = gold[pair.id]
        assert pair.chosen == record.response
        assert pair.prefix_l == pair.prefix_w == truncate(record.response, pair.truncation_step)[0]
        assert pair.suffix_l != pair.suffix_w
        assert (preference_dir / pair.image).read_bytes() == (subset_dir / record.image).read_bytes()
    rows = read_jsonl(preference_dir / "pairs.jsonl")  # w(i, n, ε) is computed from (i, ε) where used, not stored
    assert all("beta_weight" not in row for row in rows)
    weights = [float(beta_weight(p.truncation_step, p.noise_level)) for p in pairs]
    assert stats["beta_weight"]["mean"] == pytest.approx(sum(weights) / len(weights))


def test_perturbation_schemes():
    rng = random.Random(0)
    paper = [draw_perturbation(rng) for _ in range(400)]
    assert {p.truncation_step for p in paper} == {1, 2, 3, 4}
    assert min(p.noise_level for p in paper) < 0.05 and max(p.noise_level for p in paper) > 0.95
    released = [draw_perturbation(rng, "released") for _ in range(400)]
    assert {p.truncation_step for p in released} == {1, 2, 3}
    for p in released:
        if p.truncation_step == 3:
            assert (p.kind, p.noise_level) == ("uniform", 1.0)
        else:
            assert p.kind == "gaussian" and RELEASED_NOISE_RANGE[0] <= p.noise_level <= RELEASED_NOISE_RANGE[1]
    assert {draw_perturbation(rng, steps=(1,)).truncation_step for _ in range(20)} == {1}
    on_policy = {draw_perturbation(rng, "on-policy") for _ in range(20)}
    assert {(p.truncation_step, p.noise_level, p.kind) for p in on_policy} == {(3, 0.0, "clean")}
    image = Image.new("RGB", (8, 8), (10, 200, 30))
    assert next(iter(on_policy)).apply(image).tobytes() == image.tobytes()
    with pytest.raises(ValueError, match="not available in the on-policy scheme"):
        draw_perturbation(rng, "on-policy", (1,))


def test_on_policy_pairs_keep_only_the_models_reasoning_errors(subset_dir):
    """The on-policy filter on constructed continuations after the gold SUMMARY and CAPTION: a rejected
    answer that is right is no error and is dropped; a wrong or unreadable one is kept."""
    record = load_data(subset_dir).records[0]
    prefix, suffix = truncate(record.response, 3)
    wrong_answer = "A" if record.answer != "A" else "B"
    pairs = [PreferencePair(record.id, record.image, record.question, prefix, suffix, prefix, rejected, 3, 0.0, "clean")
             for rejected in (f"<REASONING>Other steps.</REASONING>\n\n<CONCLUSION>{record.answer}</CONCLUSION>",
                              f"<REASONING>Other steps.</REASONING>\n\n<CONCLUSION>{wrong_answer}</CONCLUSION>",
                              "<REASONING>Other steps.</REASONING>")]
    assert reasoning_errors(pairs, [record]) == pairs[1:]


def test_a_judge_is_chosen_among_registered_entry_points_never_imported_by_name(register_judge):
    register_judge("three", "return len(responses) == 3")
    assert load_judge("three")("q", ["a", "b", "c"]) is True and load_judge("rule")("q", ["x"]) is False
    for name in ("judge_three:judge", "os:system", "subprocess:run"):  # a module:function run parameter
        with pytest.raises(ConfigError, match=r"unknown judge .*'sherlock.judges' \(\['three'\]\)"):
            load_judge(name)


def test_online_stage_never_reads_gold_answers(tiny_model_dir, subset_dir, tmp_path, register_judge):
    """Scrambling every gold answer and response of the pool leaves the iteration's pairs unchanged."""
    register_judge("always", "return True")
    scrambled = tmp_path / "scrambled"
    scrambled.mkdir()
    rows = read_jsonl(subset_dir / "data.jsonl")
    responses = [row["conversations"][1]["value"] for row in rows]
    for row, response in zip(rows, responses[1:] + responses[:1]):
        row["conversations"][1]["value"] = response
        row["answer"] = "Z"
    (scrambled / "data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    for row in rows:
        (scrambled / row["image"]).parent.mkdir(parents=True, exist_ok=True)
        (scrambled / row["image"]).write_bytes((subset_dir / row["image"]).read_bytes())

    items, _ = unlabeled_pool(scrambled)
    assert not any(hasattr(item, "answer") or hasattr(item, "response") for item in items)

    def iteration(pool, name):
        config = OnlineConfig(model=str(tiny_model_dir), data=str(pool), output=str(tmp_path / name),
                              num_pairs=3, judge="always", truncation_steps="1",
                              max_new_tokens=16, max_steps=1, batch_size=2)
        model_dir = run_online_iteration(config)
        assert (model_dir / "config.json").is_file()
        return (tmp_path / name / "pairs" / "pairs.jsonl").read_text()

    original = iteration(subset_dir, "original")
    assert original.strip(), "the iteration built pairs"
    assert iteration(scrambled, "scrambled") == original
    first = read_pairs(tmp_path / "original" / "pairs")[0]
    assert first.prefix_w + first.suffix_w != first.prefix_l + first.suffix_l
