"""Supervised fine-tuning of a VLM on chat examples with TRL's ``SFTTrainer``.

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


@dataclass(frozen=True)
class SFTExample:
    """One training sequence: a user prompt with an image, and the target response."""

    prompt: str
    response: str
    image_path: str


def examples_from_records(records: list[Record], image_root: Path) -> list[SFTExample]:
    """Direct sequences x → Y (question → the record's 4-stage response)."""
    return [SFTExample(r.question, r.response, str(Path(image_root) / r.image)) for r in records]


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


def sft_args(output_dir: str | Path, **overrides) -> SFTConfig:
    """``SFTConfig`` with this project's defaults: assistant-only loss, no hub, CPU-safe precision."""
    on_gpu = torch.cuda.is_available()
    defaults = dict(
        output_dir=str(output_dir),
        assistant_only_loss=True,
        max_length=None,
        per_device_train_batch_size=16,
        learning_rate=1e-5,
        lr_scheduler_type="cosine",
        warmup_steps=0.03,  # a float below 1 is a ratio of the total steps
        weight_decay=0.0,
        num_train_epochs=1,
        logging_steps=10,
        save_strategy="no",
        report_to=[],
        bf16=on_gpu,
        use_cpu=not on_gpu,
        gradient_checkpointing=False,
        dataloader_num_workers=0,
        seed=0,
    )
    defaults.update(overrides)
    return SFTConfig(**defaults)


def train_sft(model_dir: str | Path, examples: list[SFTExample], output_dir: str | Path, args: SFTConfig) -> Path:
    """Fine-tune the checkpoint at ``model_dir`` on ``examples``; save model + processor to ``output_dir``."""
    model, processor = load_vlm(model_dir, dtype=torch.float32)
    trainer = SFTTrainer(model=model, args=args, train_dataset=sft_dataset(examples), processing_class=processor)
    trainer.train()
    output_dir = Path(output_dir)
    trainer.save_model(str(output_dir))
    processor.save_pretrained(output_dir)
    return output_dir
