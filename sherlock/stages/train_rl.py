"""Octopus RL (arXiv 2602.08503): online RL with verifiable rewards and rollout augmentation.

One run is one stage of the paper: Stage I (``mask: every``, ``o1_kl: 0.01``: o1 out of the policy loss in
every correction sequence, a KL on o1 against the starting model) or Stage II (``mask: changed``,
``o1_kl: 0``), started from Stage I's model. The policy answers ``question ⊕ instruction`` with
``o1 ⊕ SEP ⊕ o2``; n rollouts per prompt are generated and n pairs recombined from them
(:mod:`sherlock.octopus`); the reward is R = 0.9·r′ + 0.1·format; the update is GRPO with a
sequence-level ratio (GSPO) on TRL's ``GRPOTrainer`` (:class:`sherlock.training.rl_trainer.OctopusTrainer`).
``selection: none`` with ``mask: none``, ``o1_kl: 0`` and ``trigger: false`` is plain GSPO with n rollouts
(the baseline).

Writes the model and ``rewards.jsonl``: one line per generation batch (reward mean and spread, accuracy of the
generated and the trained rows, w→c rate, pair classes, KL on o1, time per step).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sherlock.config import ConfigError, help_field
from sherlock.data.llava_cot import load_data
from sherlock.octopus import FORMATS, MASKS, SELECTIONS, answer_prompt, reward, trigger_prompt
from sherlock.stages.io import record_stage_config
from sherlock.training.settings import TrainSettings

REWARDS_FILE = "rewards.jsonl"


@dataclass(kw_only=True)
class TrainRLConfig(TrainSettings):
    """Config of ``sherlock train-rl``: the data, the rollouts, the augmentation, the GSPO update."""

    model: str = help_field(help="starting checkpoint (the cold-start SFT model; Stage II: Stage I's)", uri="model")
    data: str = help_field(help="data set with gold answers (directory or jsonl)", uri="data")
    output: str = help_field(help="directory for checkpoints, the trained model and rewards.jsonl", uri="output")
    reference: str | None = help_field(None, "reference of the o1 KL (default: the starting checkpoint)", uri="model")
    generations: int = help_field(4, "n: rollouts generated per prompt (paper: 8); a group trains 2n with pairs")
    selection: str = help_field("paper", f"pair selection {SELECTIONS}: Alg. 1, the released code's, random, "
                                "none (plain GSPO on n rollouts)")
    include_same: bool = help_field(False, "pool pairs (i, i) too (the released code; Alg. 1 skips them)")
    mask: str = help_field("every", f"o1 ⊕ SEP out of the policy loss {MASKS}: every correction sequence "
                           "(Stage I), where c(o1) ≠ c(o2) (Stage II), none")
    o1_kl: float = help_field(0.01, "coefficient of the KL on o1 tokens against the reference (Stage I 0.01, "
                              "Stage II 0)")
    reward_caps: bool = help_field(False, "the released code's reward caps (o1 = o2, o1 without an answer, "
                                   "malformed o2)")
    response_format: str = help_field("stages", f"how an attempt is written {tuple(FORMATS)}: the LLaVA-CoT "
                                      "stages or <think>…</think> \\boxed{}")
    trigger: bool = help_field(True, "ask each question with the trigger instruction (false: the plain question, "
                                     "for GSPO from a model that answers once)")
    max_completion_length: int = help_field(256, "tokens per generated rollout (o1 ⊕ SEP ⊕ o2; paper 6144)")
    temperature: float = help_field(1.0, "rollout sampling temperature")
    top_p: float = help_field(1.0, "rollout nucleus sampling")
    epsilon: float = help_field(3e-4, "lower clip of the sequence-level ratio (GSPO)")
    epsilon_high: float = help_field(4e-4, "upper clip of the sequence-level ratio")
    steps_per_generation: int = help_field(4, "optimiser micro-steps per generation batch (paper: 4 updates)")
    use_vllm: bool = help_field(False, "generate with vLLM colocated with training (a GPU and vLLM installed)")
    learning_rate: float = help_field(1e-6, "peak learning rate (paper: 1e-6 on 8B)")
    batch_size: int = help_field(8, "rows per device per micro-step (a multiple of the group size)")
    weight_decay: float = help_field(0.1, "AdamW weight decay (paper: 0.1)")
    lr_scheduler: str = help_field("constant_with_warmup", "transformers scheduler name (paper: constant)")
    warmup_ratio: float = help_field(0.0, "warm-up: a ratio of the steps below 1, else a number of steps")
    logging_steps: int = help_field(1, "log metrics every this many steps")

    @property
    def group_size(self) -> int:
        """N: the rows of a prompt's group (2n with pairs, n without)."""
        return self.generations if self.selection == "none" else 2 * self.generations

    def check(self) -> None:
        """Refuse inconsistent settings and a missing checkpoint before anything loads."""
        from sherlock.models.loading import require_checkpoint

        self.check_training()
        self.check_rl()
        for checkpoint in (self.model, self.reference or self.model):
            require_checkpoint(checkpoint)

    def check_rl(self) -> None:
        """Refuse RL settings that cannot run: an unknown rule, a group of one, batches that split a group."""
        for name, value, allowed in (("selection", self.selection, SELECTIONS), ("mask", self.mask, MASKS),
                                     ("response_format", self.response_format, tuple(FORMATS))):
            if value not in allowed:
                raise ConfigError(f"{name} must be one of {allowed}, got {value!r}")
        if self.generations < 2:
            raise ConfigError("generations must be at least 2: a group of one has no advantage")
        if (self.batch_size * self.steps_per_generation) % self.group_size:
            raise ConfigError(f"batch_size × steps_per_generation ({self.batch_size * self.steps_per_generation}) "
                              f"must be a multiple of the group size {self.group_size}")
        if self.o1_kl < 0 or self.max_completion_length <= 0:
            raise ConfigError("o1_kl must be >= 0 and max_completion_length positive")


def rl_rows(data_path: str, response_format: str, trigger: bool = True) -> list[dict]:
    """One row per record: its id, the question with the trigger instruction (``trigger``; else as a plain answer
    is asked) as a chat prompt, the image, the gold answer; a record without a gold answer cannot be rewarded and
    is refused by id.
    """
    from sherlock.data.schema import open_image

    data = load_data(data_path)
    if missing := [r.id for r in data.records if not r.answer]:
        raise ConfigError(f"{len(missing)} record(s) have no gold answer to reward, first {missing[:3]}")
    if follow_ups := [r.id for r in data.records if r.context]:
        raise ConfigError(f"follow-up turns are not rolled out, first {follow_ups[:3]}")
    fmt = FORMATS[response_format]
    ask = trigger_prompt if trigger else answer_prompt
    return [{"id": r.id, "prompt": [{"role": "user", "content": ask(r.question, fmt)}],
             "image": open_image(data.image_root, r), "answer": r.answer, "answer_type": r.answer_type or ""}
            for r in data.records]


def octopus_reward(config: TrainRLConfig):
    """The reward function TRL calls: R of :func:`sherlock.octopus.reward` per completion."""
    fmt = FORMATS[config.response_format]

    def octopus(completions, answer, answer_type, **_):
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        return [reward(text, gold, kind or None, fmt, config.reward_caps)
                for text, gold, kind in zip(texts, answer, answer_type, strict=True)]
    return octopus


def run_train_rl(config: TrainRLConfig) -> Path:
    """Train one RL stage; saves the model, processor and ``rewards.jsonl`` to ``config.output``."""
    import torch
    from datasets import Dataset
    from trl import GRPOConfig

    from sherlock import distributed
    from sherlock.models.loading import load_vlm
    from sherlock.protocol import Protocol, read_protocol
    from sherlock.training.rl_trainer import OctopusSettings, OctopusTrainer
    from sherlock.training.setup import prepare_model, train_and_save, training_arguments

    config.check()
    dataset = Dataset.from_list(rl_rows(config.data, config.response_format, config.trigger))
    model, processor = load_vlm(config.model, dtype=torch.float32, image_budget=config.image_budget())
    reference = None
    if config.o1_kl:
        reference, _ = load_vlm(config.reference or config.model, dtype=torch.float32)
        reference.requires_grad_(False)
    args = training_arguments(
        config, config.output, cls=GRPOConfig, remove_unused_columns=False,
        num_generations=config.group_size, max_completion_length=config.max_completion_length,
        temperature=config.temperature, top_p=config.top_p, loss_type="grpo",
        importance_sampling_level="sequence", epsilon=config.epsilon, epsilon_high=config.epsilon_high,
        beta=0.0, scale_rewards="group", mask_truncated_completions=False, num_iterations=1,
        steps_per_generation=config.steps_per_generation, use_vllm=config.use_vllm, vllm_mode="colocate",
        log_completions=False)
    settings = OctopusSettings(generations=config.generations, selection=config.selection,
                               include_same=config.include_same, mask=config.mask, o1_kl=config.o1_kl,
                               response_format=config.response_format)
    trainer = OctopusTrainer(model=prepare_model(model, config), reward_funcs=octopus_reward(config), args=args,
                             train_dataset=dataset, processing_class=processor, octopus=settings,
                             reference_model=reference)
    record_stage_config(config, config.output)
    output = train_and_save(trainer, config, config.output, processor, Protocol("continue", config.response_format)
                            if config.trigger else read_protocol(config.model))
    if distributed.is_main():
        steps = [entry for entry in trainer.state.log_history if "reward" in entry]
        (output / REWARDS_FILE).write_text("".join(json.dumps(step) + "\n" for step in steps))
    return output
