"""Length-balanced SFT micro-batches: the same step as one batch of the same examples, less padding."""

import json

import pytest
from trl import SFTConfig, SFTTrainer

from sherlock.models.loading import load_vlm
from sherlock.training.settings import TrainSettings
from sherlock.training.setup import training_arguments
from sherlock.training.sft import (
    VLMSFTTrainer,
    correction_examples,
    examples_from_records,
    sft_dataset,
    token_lengths,
    train_sft,
)


@pytest.fixture(scope="module")
def mixed_examples(synthetic_data):
    """Sherlock-SFT's mix: 8 direct sequences and 8 correction sequences quoting a whole response."""
    records = synthetic_data.records[:8]
    rejected = {r.id: synthetic_data.records[8 + k].response for k, r in enumerate(records)}
    root = synthetic_data.image_root
    return examples_from_records(records, root) + correction_examples(records, rejected, root)


def _first_step(output_dir) -> dict:
    log = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return next(entry for entry in log if entry.get("step") == 1 and "loss" in entry)


def test_a_balanced_step_is_one_batch_of_the_same_examples(tiny_model_dir, mixed_examples, tmp_path):
    """One optimiser step over all 16 examples: as one batch of 16, and as 4 length-balanced
    micro-batches (token mean over the step): the same loss and the same gradient norm."""
    whole = TrainSettings(learning_rate=1e-3, epochs=1, batch_size=16, logging_steps=1)
    split = TrainSettings(learning_rate=1e-3, epochs=1, batch_size=4, grad_accum=4, logging_steps=1)
    one = _first_step(train_sft(tiny_model_dir, mixed_examples, tmp_path / "one", whole))
    balanced = _first_step(train_sft(tiny_model_dir, mixed_examples, tmp_path / "balanced", split,
                                     length_balanced=True))
    assert balanced["loss"] == pytest.approx(one["loss"], rel=1e-4)
    assert balanced["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-3)


def _trainer(cls, model_dir, examples, tmp_path, seed=0):
    model, processor = load_vlm(model_dir)
    settings = TrainSettings(batch_size=4, grad_accum=4, seed=seed)
    args = training_arguments(settings, tmp_path, SFTConfig, assistant_only_loss=True, max_length=None,
                              train_sampling_strategy="batch_rebalance")
    dataset = sft_dataset(examples, token_lengths(examples, processor))
    return cls(model=model, args=args, train_dataset=dataset, processing_class=processor), dataset["length"]


def test_micro_batches_group_similar_lengths_with_the_run_seed(tiny_model_dir, mixed_examples, tmp_path):
    trainer, lengths = _trainer(VLMSFTTrainer, tiny_model_dir, mixed_examples * 2, tmp_path, seed=3)
    loader = trainer.get_train_dataloader()
    micro = list(loader.batch_sampler)
    assert sorted(i for batch in micro for i in batch) == list(range(32))  # every example once per epoch
    padded = sum(len(batch) * max(lengths[i] for i in batch) for batch in micro)
    unbalanced = 32 * max(lengths)  # a random batch of 16 holds a correction sequence almost surely
    assert len({len(batch) for batch in micro}) > 1 and padded < 0.8 * unbalanced
    assert loader.batch_sampler.seed == 3
    other, _ = _trainer(VLMSFTTrainer, tiny_model_dir, mixed_examples * 2, tmp_path, seed=4)
    assert list(other.get_train_dataloader().batch_sampler) != micro


def test_the_unextended_trainer_loses_the_length_column(tiny_model_dir, mixed_examples, tmp_path):
    """TRL keeps only a vision data set's messages and images, so transformers' sampler finds no
    lengths: why :class:`VLMSFTTrainer` keeps the column."""
    trainer, _ = _trainer(SFTTrainer, tiny_model_dir, mixed_examples, tmp_path)
    with pytest.raises(ValueError, match="infer lengths"):
        trainer.get_train_dataloader()
