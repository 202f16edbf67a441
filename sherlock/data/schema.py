"""The record every stage passes around: one LLaVA-CoT-style example."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from sherlock.chat import Context

PAIRS_FILE = "pairs.jsonl"  # a preference set: one PreferencePair per line, images beside it


@dataclass(frozen=True)
class Record:
    """One example: an image reference, a question and a 4-stage response.

    ``image`` is a path relative to the data set's image root (the LLaVA-CoT-100k layout).
    ``answer`` is the gold answer where one is known (synthetic and benchmark data);
    ``answer_type`` says how to compare it ("choice", "number", "text").
    ``context`` holds the earlier (question, response) turns of the record's conversation, oldest
    first: a follow-up question is asked, trained and answered after them.
    """

    id: str
    image: str
    question: str
    response: str
    answer: str | None = None
    answer_type: str | None = None
    tier: str | None = None
    context: Context = ()

    def to_llava_cot(self) -> dict:
        """The record as one line of the LLaVA-CoT-100k ``train.jsonl`` (gold fields appended). A
        follow-up turn's line holds its earlier turns too, and ``turn``: the index of its own turn
        (the line is that one record).
        """
        turns = [*self.context, (self.question, self.response)]
        row = {
            "id": self.id,
            "image": self.image,
            "conversations": [message for question, response in turns for message in
                              ({"from": "human", "value": question}, {"from": "gpt", "value": response})],
        }
        extras = {"answer": self.answer, "answer_type": self.answer_type, "tier": self.tier,
                  "turn": len(self.context) or None}
        row.update({k: v for k, v in extras.items() if v is not None})
        return row

    def digest(self) -> str:
        """sha256 of the record's canonical JSON: identifies its content, not its position."""
        canonical = json.dumps(without_empty_context(dataclasses.asdict(self)), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()


def without_empty_context(row: dict) -> dict:
    """``row`` without a ``context`` key that holds nothing: a single-turn record or pair is stored
    (and digested) as before conversations had context.
    """
    return {key: value for key, value in row.items() if key != "context" or value}


def write_jsonl(rows: Iterable[dict], path: str | Path) -> Path:
    """Write one JSON object per line (creating the folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def read_jsonl(path: str | Path) -> list[dict]:
    """The JSON objects of a jsonl file (blank lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    with open(path, encoding="utf-8") as source:
        return [json.loads(line) for line in source if line.strip()]


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes."""
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()


IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")  # what a served model decodes from a caller's bytes
# a training or benchmark image larger than this is quarantined before it is decoded: a 420 KB PNG of
# 12000 x 12000 passed PIL's bomb check and took training to 1.7 GB RSS (processors resize far below it)
MAX_DATA_IMAGE_PIXELS = 4096 * 4096


def open_image(image_root: Path, record: Record) -> Image.Image:
    """The record's image, as :func:`to_rgb` makes it."""
    with Image.open(Path(image_root) / record.image) as image:
        return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """An opened image as RGB, upright (its EXIF orientation applied), 16-bit and 32-bit integer
    images scaled to 8 bits (PIL's own conversion clips them, which turns most of a 16-bit image white).
    """
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I", "I;16", "I;16B", "I;16L"):
        pixels = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(pixels / 257.0, 0, 255).round().astype(np.uint8), mode="L")
    return image.convert("RGB")
