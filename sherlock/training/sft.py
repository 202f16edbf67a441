"""Supervised fine-tuning of a VLM on chat examples with TRL's ``SFTTrainer`` (Stage I).

Only the assistant turn is trained (``assistant_only_loss``; the chat template marks it with
``{% generation %}``). Images are referenced by path and decoded lazily by ``datasets``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import Dataset, Features, Image, List, Value
from trl import SFTConfig, SFTTrainer

from sherlock.chat import conversation
from sherlock.data.schema import Record
from sherlock.models.loading import load_vlm
from sherlock.prompts import correction_prompt
from sherlock.training.setup import (
    ConvertedCheckpointResume,
    TrainSettings,
    prepare_model,
    train_and_save,
    training_arguments,
)


@dataclass(frozen=True)
class SFTExample:
    """One training sequence: a user prompt with an image, and the target response."""

    prompt: str
    response: str
    image_path: str


def examples_from_records(records: list[Record], image_root: Path) -> list[SFTExample]:
    """Direct sequences x → Y (question → the record's 4-stage response)."""
    return [SFTExample(r.question, r.response, str(Path(image_root) / r.image)) for r in records]


def correction_examples(records: list[Record], rejected: dict[str, str], image_root: Path) -> list[SFTExample]:
    """Correction sequences R(Q, Y^l) + image → Y^w (Eq. 3, second term), one per record.

    ``rejected`` maps record id to the response Y^l sampled from R0; every record needs one.
    """
    missing = [r.id for r in records if r.id not in rejected]
    if missing:
        raise ValueError(f"{len(missing)} records have no rejected response (first: {missing[0]})")
    return [SFTExample(correction_prompt(r.question, rejected[r.id]), r.response, str(Path(image_root) / r.image))
            for r in records]


class VLMSFTTrainer(ConvertedCheckpointResume, SFTTrainer):
    """TRL's ``SFTTrainer`` that resumes VLM checkpoints with converted weight names correctly."""


def sft_dataset(examples: list[SFTExample]) -> Dataset:
    """A ``messages`` + ``images`` dataset in the layout TRL's vision SFT collator expects."""
    if not examples:
        raise ValueError("the SFT data set is empty")
    features = Features(
        {
            "messages": List(
                {"role": Value("string"), "content": List({"type": Value("string"), "text": Value("string")})}
            ),
            "images": List(Image()),
        }
    )
    rows = {
        "messages": [conversation(e.prompt, e.response) for e in examples],
        "images": [[e.image_path] for e in examples],
    }
    return Dataset.from_dict(rows, features=features)


def train_sft(model_dir: str | Path, examples: list[SFTExample], output_dir: str | Path,
              settings: TrainSettings) -> Path:
    """Fine-tune the checkpoint at ``model_dir`` on ``examples``; save model + processor to ``output_dir``.

    Loss: −E log π(Y|prompt) over the assistant tokens. Checkpoints (``settings.save_steps``) go to
    ``output_dir`` and a rerun resumes from the last one.
    """
    model, processor = load_vlm(model_dir, dtype=torch.float32)
    model = prepare_model(model, settings)
    args = training_arguments(settings, output_dir, SFTConfig, assistant_only_loss=True, max_length=None)
    trainer = VLMSFTTrainer(model=model, args=args, train_dataset=sft_dataset(examples), processing_class=processor)
    return train_and_save(trainer, settings, output_dir, processor)
