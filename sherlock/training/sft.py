"""Supervised fine-tuning of a VLM on chat examples with TRL's ``SFTTrainer`` (Stage I).

Only the last assistant turn is trained (``assistant_only_loss``: the chat template marks the
assistant turns with ``{% generation %}``; :class:`LastTurnLoss` keeps the last). A follow-up turn of
a conversation comes after its earlier turns, which it is conditioned on but not trained on: over a
conversation's records every response is trained once, after the turns before it, as LLaVA-CoT
trains a whole conversation. Images are referenced by path and decoded lazily by ``datasets``.

Sherlock-SFT mixes direct sequences (~150 tokens) with correction sequences that quote a whole
response (~450), so random batches pad most sequences to a correction sequence's length. With
``length_balanced`` each optimiser step draws its ``batch_size × grad_accum`` examples at random as
before, and transformers' ``BatchRebalanceSampler`` splits them into ``grad_accum`` micro-batches of
similar length (variable sizes, about ``batch_size`` on average). The loss is the token mean over the
whole step (TRL's ``num_items_in_batch``), so a step's gradient is that of one batch of the same
examples, with less padding (bench P6 reports both arms' padded/real tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import Dataset, Features, Image, List, Value
from transformers.trainer_pt_utils import BatchRebalanceSampler
from trl import SFTConfig, SFTTrainer

from sherlock.chat import Context, conversation
from sherlock.data.schema import Record
from sherlock.models.loading import add_tokens, load_vlm
from sherlock.prompts import correction_prompt
from sherlock.protocol import SHERLOCK, Protocol
from sherlock.training.memory import plan_training_step
from sherlock.training.settings import TrainSettings
from sherlock.training.setup import (
    IGNORE_INDEX,
    ConvertedCheckpointResume,
    prepare_model,
    train_and_save,
    training_arguments,
)


@dataclass(frozen=True)
class SFTExample:
    """One training sequence: a user prompt with an image (after the earlier turns of its
    conversation), and the target response.
    """

    prompt: str
    response: str
    image_path: str
    context: Context = ()


def examples_from_records(records: list[Record], image_root: Path) -> list[SFTExample]:
    """Direct sequences x → Y (question → the record's 4-stage response)."""
    return [SFTExample(r.question, r.response, str(Path(image_root) / r.image), r.context) for r in records]


def correction_examples(records: list[Record], rejected: dict[str, str], image_root: Path) -> list[SFTExample]:
    """Correction sequences R(Q, Y^l) + image → Y^w (Eq. 3, second term), one per record.

    ``rejected`` maps record id to the response Y^l sampled from R0; every record needs one.
    """
    missing = [r.id for r in records if r.id not in rejected]
    if missing:
        raise ValueError(f"{len(missing)} records have no rejected response (first: {missing[0]})")
    return [SFTExample(correction_prompt(r.question, rejected[r.id]), r.response, str(Path(image_root) / r.image),
                       r.context) for r in records]


class LastTurnLoss:
    """Wraps TRL's collator: of the assistant tokens it labels, only the last turn's stay labelled
    (the earlier turns of a conversation are context).
    """

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, examples: list[dict]) -> dict:
        """Collate ``examples`` with TRL's collator, then unlabel every assistant turn but the last."""
        batch = self.collator(examples)
        labels = batch["labels"]
        labelled = labels != IGNORE_INDEX
        starts = labelled.clone()
        starts[:, 1:] &= ~labelled[:, :-1]  # first token of each labelled run
        positions = torch.arange(labels.shape[1])
        last_start = (starts * positions).amax(dim=1, keepdim=True)
        labels[positions < last_start] = IGNORE_INDEX
        return batch


class VLMSFTTrainer(ConvertedCheckpointResume, SFTTrainer):
    """TRL's ``SFTTrainer`` that trains the last assistant turn only (:class:`LastTurnLoss`), resumes
    VLM checkpoints with converted weight names correctly and, under
    ``train_sampling_strategy="batch_rebalance"``, keeps the precomputed length column for the
    sampler (TRL keeps only messages and images of a vision data set) and shuffles with the run's data
    seed (transformers 5.23 leaves the sampler at its default seed, 42, whatever the run's seed).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.data_collator = LastTurnLoss(self.data_collator)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        length = self.args.length_column_name
        if self.args.train_sampling_strategy == "batch_rebalance" and length not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, length]

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if isinstance(sampler, BatchRebalanceSampler):
            sampler.seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return sampler


def sft_dataset(examples: list[SFTExample], lengths: list[int] | None = None) -> Dataset:
    """A ``messages`` + ``images`` dataset in the layout TRL's vision SFT collator expects, with a
    ``length`` column (tokens per example) when ``lengths`` are given.
    """
    if not examples:
        raise ValueError("the SFT data set is empty")
    columns = {
        "messages": List(
            {"role": Value("string"), "content": List({"type": Value("string"), "text": Value("string")})}
        ),
        "images": List(Image()),
    }
    rows = {
        "messages": [conversation(e.prompt, e.response, e.context) for e in examples],
        "images": [[e.image_path] for e in examples],
    }
    if lengths is not None:
        columns["length"], rows["length"] = Value("int64"), lengths
    return Dataset.from_dict(rows, features=Features(columns))


def token_lengths(examples: list[SFTExample], processor) -> list[int]:
    """Text tokens of each example's chat-templated conversation (the image as its placeholder)."""
    texts = [processor.apply_chat_template(conversation(e.prompt, e.response, e.context), tokenize=False)
             for e in examples]
    return [len(ids) for ids in processor.tokenizer(texts, add_special_tokens=False).input_ids]


def train_sft(model_dir: str | Path, examples: list[SFTExample], output_dir: str | Path,
              settings: TrainSettings, length_balanced: bool = False, added_tokens: tuple[str, ...] = (),
              protocol: Protocol = SHERLOCK) -> Path:
    """Fine-tune the checkpoint at ``model_dir`` on ``examples``; save model + processor to ``output_dir``.

    Loss: −E log π(Y|prompt) over the assistant tokens. Checkpoints (``settings.save_steps``) go to
    ``output_dir`` and a rerun resumes from the last one. ``length_balanced``: micro-batches of
    similar length within each step (the module docstring). ``added_tokens`` become single tokens of the
    model and its saved processor first (:func:`sherlock.models.loading.add_tokens`). ``protocol``: how the
    trained model self-corrects (that of the examples).
    """
    model, processor = load_vlm(model_dir, dtype=torch.float32, image_budget=settings.image_budget())
    if added_tokens:
        add_tokens(model, processor, added_tokens)
    lengths = token_lengths(examples, processor)
    plan_training_step(model_dir, settings, max(lengths), rows_per_example=1)  # on CPU still: refuse before a GPU
    model = prepare_model(model, settings)
    length_balanced = length_balanced and settings.grad_accum > 1  # one micro-batch per step: nothing to balance
    args = training_arguments(settings, output_dir, SFTConfig, assistant_only_loss=True, max_length=None,
                              train_sampling_strategy="batch_rebalance" if length_balanced else "random")
    dataset = sft_dataset(examples, lengths if length_balanced else None)
    trainer = VLMSFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor)
    return train_and_save(trainer, settings, output_dir, processor, protocol)
