"""Load any Hugging Face VLM checkpoint by path with the Auto classes (offline)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor


class CheckpointNotFoundError(FileNotFoundError):
    """The path does not hold a saved model (no ``config.json``)."""


def require_checkpoint(path: str | Path) -> Path:
    """``path`` as a Path; raises :class:`CheckpointNotFoundError` unless it holds a ``config.json``."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise CheckpointNotFoundError(f"no model checkpoint at {path} (config.json missing)")
    return path


def load_vlm(path: str | Path, dtype: torch.dtype | str = "auto", device: str | None = None):
    """Load ``(model, processor)`` from a ``save_pretrained`` directory.

    Works for the tiny Mllama and for Llama-3.2-11B-Vision-Instruct alike; nothing is fetched
    from a hub (``local_files_only``).
    """
    path = require_checkpoint(path)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, local_files_only=True)
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    if device is not None:
        model = model.to(device)
    return model, processor

