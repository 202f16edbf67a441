"""Octopus RL on TRL's GRPOTrainer: the extension against the unextended trainer, the recombined rows and their
masks on constructed rollouts, and two-step runs of ``train-rl`` on every model family."""

import json
import os

import pytest
import torch
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from sherlock.data.llava_cot import load_data
from sherlock.data.schema import open_image
from sherlock.models.loading import load_vlm
from sherlock.protocol import Protocol, read_protocol
from sherlock.reasoning import SEP
from sherlock.stages.train_rl import TrainRLConfig, rl_rows, run_train_rl
from sherlock.training.rl_trainer import OctopusSettings, OctopusTrainer, cross_attention_mask

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
EMBEDDED = "sherlock/models/embedded"


def _text_reward(completions, **_):
    """A reward that varies between rollouts of a random model, so that the advantages are not all zero."""
    return [float(sum(map(ord, c[0]["content"] if isinstance(c, list) else c)) % 7) for c in completions]


def _args(tmp_path, group: int) -> GRPOConfig:
    return GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=group, num_generations=group,
                      max_completion_length=12, max_steps=1, use_cpu=True, report_to=[], learning_rate=1e-2,
                      loss_type="grpo", importance_sampling_level="sequence", beta=0.0, seed=0,
                      remove_unused_columns=False, logging_steps=1)


def test_without_augmentation_masks_or_kl_it_trains_exactly_as_grpo(family_model_dirs, subset_dir, tmp_path):
    """Tiny Qwen2.5-VL, which the unextended trainer runs: one step of each from the same weights and seed."""
    data = load_data(subset_dir)
    rows = [{"id": r.id, "prompt": r.question, "image": open_image(data.image_root, r)} for r in data.records[:2]]
    rows = [{**row, "prompt": [{"role": "user", "content": row["prompt"]}]} for row in rows]
    trained = []
    for cls, extra in ((GRPOTrainer, {}), (OctopusTrainer, {"octopus": OctopusSettings(4, "none", mask="none",
                                                                                       o1_kl=0.0)})):
        model, processor = load_vlm(family_model_dirs["qwen2_5_vl"], dtype=torch.float32)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        trainer = cls(model=model, reward_funcs=_text_reward, args=_args(tmp_path / cls.__name__, 4),
                      train_dataset=Dataset.from_list(rows), processing_class=processor, **extra)
        trainer.train()
        trained.append(model.state_dict())
    changed = [k for k in before if not torch.equal(before[k], trained[0][k])]
    assert changed, "the step must move some weights for the comparison to mean anything"
    for key in before:
        torch.testing.assert_close(trained[1][key], trained[0][key], rtol=0, atol=0)


def test_pairs_are_built_from_the_rollouts_tokens_with_their_masks(tiny_model_dir, subset_dir, tmp_path, monkeypatch):
    """Two rollouts for gold 3: A = 2 ⊕ SEP ⊕ 3 (w→c), B = 3 (no correction). With i = j pooled the pairs are
    (A.o1, A.o2) w→c and (B.o1, A.o2) c→c; Stage I masks o1 ⊕ SEP of A and of both pairs, the KL sees o1."""
    data = load_data(subset_dir)
    model, processor = load_vlm(tiny_model_dir, dtype=torch.float32)
    reference, _ = load_vlm(tiny_model_dir, dtype=torch.float32)
    row = {"id": "q", "prompt": "How many?", "image": open_image(data.image_root, data.records[0])}
    trainer = OctopusTrainer(model=model, reward_funcs=_text_reward, args=_args(tmp_path, 4),
                             train_dataset=Dataset.from_list([row]), processing_class=processor,
                             octopus=OctopusSettings(2, "paper", include_same=True, mask="every", o1_kl=0.01),
                             reference_model=reference)
    tokenizer, eos = processor.tokenizer, trainer.eos_token_ids[0]

    def encode(text):
        return tokenizer.encode(text, add_special_tokens=False)

    def staged(answer):
        return f"<SUMMARY>s</SUMMARY><CAPTION>c</CAPTION><REASONING>r</REASONING><CONCLUSION>{answer}</CONCLUSION>"

    a1, sep, a2, b1 = encode(staged("2")), encode(SEP), encode(staged("3")), encode(staged("3"))
    rollouts = [a1 + sep + a2 + [eos], b1 + [eos]]
    monkeypatch.setattr(GRPOTrainer, "_generate", lambda self, prompts: (
        [[7]] * len(prompts), rollouts, None, None, None, {}, None, []))
    trainer._rows = [{"id": "q", "answer": "3", "answer_type": "number"}] * 4
    trainer.model.train()
    _, completion_ids, masks, completions, _, _, _, _ = trainer._generate(["p"] * 4)
    assert completion_ids == [rollouts[0], rollouts[1], a1 + sep + a2 + [eos], b1 + sep + a2 + [eos]]
    assert completions[3] == staged("3") + SEP + staged("3")
    assert masks[0] == [0] * len(a1 + sep) + [1] * (len(a2) + 1)
    assert masks[1] == [1] * len(rollouts[1])
    assert masks[3] == [0] * len(b1 + sep) + [1] * (len(a2) + 1)
    lead = len(encode("\n\n"))  # the KL covers o1 up to <self-correction>
    kl = trainer._masks["kl"]
    assert kl[0] == [1] * (len(a1) + lead) + [0] * (len(sep + a2) + 1 - lead) and kl[1] == [0] * len(rollouts[1])
    assert kl[3] == [1] * (len(b1) + lead) + [0] * (len(sep + a2) + 1 - lead)
    logged = trainer._metrics["train"]
    assert logged["octopus/natural_wc_rate"] == [0.5] and logged["octopus/positive_share_trained"] == [1.0]
    assert (logged["octopus/pairs_wc"], logged["octopus/pairs_cc"]) == ([1], [1])


def test_the_built_cross_attention_mask_is_the_processors_over_the_prompt(tiny_model_dir, subset_dir):
    data = load_data(subset_dir)
    _, processor = load_vlm(tiny_model_dir, dtype=torch.float32)
    image = open_image(data.image_root, data.records[0])
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text",
                                                                                          "text": "How many?"}]}],
                                         add_generation_prompt=True)
    inputs = processor(images=[[image]], text=[text], return_tensors="pt")
    image_token = processor.tokenizer.convert_tokens_to_ids("<|image|>")
    built = cross_attention_mask(inputs["input_ids"], image_token, inputs["aspect_ratio_mask"])
    assert torch.equal(built, inputs["cross_attention_mask"].long())


@pytest.mark.parametrize("family", ["embedded", "mllama", "qwen2_5_vl", "qwen3_vl", "gemma3", "idefics3"])
def test_two_rl_steps_write_a_model_and_per_step_reward_statistics(family, family_model_dirs, subset_dir, tmp_path):
    """Stage I settings (pairs, every o1 masked, the o1 KL against the starting model) for two steps."""
    model = EMBEDDED if family == "embedded" else family_model_dirs[family]
    config = TrainRLConfig(model=str(model), data=str(subset_dir), output=str(tmp_path / "rl"),
                           max_steps=2, batch_size=8, steps_per_generation=1, generations=4,
                           max_completion_length=16, learning_rate=1e-4, resume=False)
    output = run_train_rl(config)
    steps = [json.loads(line) for line in (output / "rewards.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2]
    assert {"reward", "reward_std", "octopus/positive_share_trained", "octopus/o1_kl"} <= set(steps[0])
    assert (output / "config.json").is_file() and (output / "stage_config.yaml").is_file()
    assert read_protocol(output) == Protocol("continue", "stages")  # served and registered as it was trained
    load_vlm(output, dtype=torch.float32)


def test_records_without_a_gold_answer_are_refused(tmp_path):
    from sherlock.config import ConfigError
    from sherlock.data.synthetic import generate_synthetic

    path = generate_synthetic(tmp_path, 3, seed=0)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    lines[1].pop("answer")
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(ConfigError, match=f"1 record.* no gold answer to reward, first \\['{lines[1]['id']}"):
        rl_rows(str(path), "stages")


def test_the_prompt_carries_the_trigger_unless_the_baseline_asks_plainly(tmp_path):
    """Octopus asks every question with the trigger instruction; GSPO from a model that answers once
    (``trigger: false``) asks it as the cold-start samples are asked."""
    from sherlock.data.synthetic import generate_synthetic
    from sherlock.octopus import FORMATS

    path = str(generate_synthetic(tmp_path, 2, seed=0))
    question = json.loads(open(path).readline())["conversations"][0]["value"].replace("<image>\n", "")
    asked = {(fmt, trigger): rl_rows(path, fmt, trigger)[0]["prompt"][0]["content"]
             for fmt in FORMATS for trigger in (True, False)}
    assert asked["stages", True] == f"{question}\n\n{FORMATS['stages'].instruction}"
    assert asked["stages", False] == question
    assert asked["think-boxed", True] == f"{question}\n\n{FORMATS['think-boxed'].instruction}"
    assert asked["think-boxed", False] == f"{question}\n\n{FORMATS['think-boxed'].answer_instruction}"
