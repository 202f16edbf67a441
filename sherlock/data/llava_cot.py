"""Loader for the LLaVA-CoT-100k release layout, with validation and a quarantine file.

The release is a ``train.jsonl`` whose lines are ``{"id", "image", "conversations": [{"from":
"human", "value": question}, {"from": "gpt", "value": response}, ...]}`` with ``image`` relative
to an image root whose first folder names the source data set (``coco/…``, ``sqa/…``, ``chartqa/…``).
Ids are namespaced by that source (``coco/<id>``): the release reuses ids across sources. A line
with several human/gpt turns yields one record per turn (ids ``<source>/<id>#<turn>``), each with
the earlier turns as its context (a follow-up question is trained and answered after them, as
LLaVA-CoT trains); the turns of a line are one conversation (:func:`conversation_of`), kept together
by subset sampling. A line is one unit: any bad turn quarantines the line. A line with ``turn: k``
(a follow-up turn written back by :meth:`Record.to_llava_cot`) is one record, its turns before k
the context. Every line that cannot become valid records is
written, with its line number and reason, to a quarantine jsonl; nothing is dropped silently.
Loading fails when the bad fraction exceeds a limit.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from sherlock import distributed
from sherlock.answers import ANSWER_TYPES
from sherlock.data.schema import MAX_DATA_IMAGE_PIXELS, Record, write_jsonl
from sherlock.reasoning import ReasoningFormatError, attempts, parse_stages

DEFAULT_MAX_BAD_FRACTION = 0.01
DATA_FILE = "data.jsonl"  # a data set directory: this file and the images it names
IMAGE_TOKEN = "<image>"


class DataQualityError(ValueError):
    """Too many lines of a data file were quarantined."""


@dataclass(frozen=True)
class LoadedData:
    """Valid records, the file they came from, where their images live, and what was quarantined."""

    path: Path
    records: list[Record]
    image_root: Path
    num_lines: int
    num_quarantined: int
    quarantine_path: Path


class BadLine(ValueError):
    """A line that cannot become valid data: quarantined with this reason."""


def namespaced_id(line_id: str, image: str) -> str:
    """``<source>/<id>``, the source being the first folder of the image path (none: the id as is);
    an id that already carries its source's prefix (a subset written back) is kept.
    """
    parts = Path(image).parts
    if len(parts) < 2 or line_id.startswith(f"{parts[0]}/"):
        return line_id
    return f"{parts[0]}/{line_id}"


def conversation_of(record_id: str) -> str:
    """The conversation (LLaVA-CoT line) a record is a turn of: its id without the ``#<turn>`` suffix."""
    return re.sub(r"#\d+$", "", record_id)


def image_path(image_root: Path, relative: object) -> Path:
    """``image_root / relative`` for a relative path that stays under ``image_root`` (symbolic links
    followed); anything else is a bad line: a record never names a file outside its image root.
    """
    if not isinstance(relative, str) or not relative.strip():
        raise BadLine("image must be a non-empty string")
    path = image_root / relative
    if Path(relative).is_absolute() or ".." in Path(relative).parts or "\\" in relative:
        raise BadLine(f"image path {relative!r} leaves the image root")
    if not path.resolve().is_relative_to(image_root.resolve()):
        raise BadLine(f"image path {relative!r} resolves outside the image root")
    return path


def check_image(image_root: Path, relative: object, cache: dict[str, str | None]) -> None:
    """The image decodes completely (``verify()`` decodes nothing: a truncated file would pass it) and
    has at most :data:`MAX_DATA_IMAGE_PIXELS` pixels (read from its header, before decoding).
    """
    path = image_path(image_root, relative)
    if relative not in cache:
        try:
            with Image.open(path) as image:
                if image.width * image.height > MAX_DATA_IMAGE_PIXELS:
                    raise BadLine(f"image too large: {path} is {image.width}x{image.height}, over the "
                                  f"{MAX_DATA_IMAGE_PIXELS}-pixel limit of training images")
                image.load()
            cache[relative] = None
        except BadLine as error:
            cache[relative] = str(error)
        except FileNotFoundError:
            cache[relative] = f"image not found: {path}"
        except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as error:
            cache[relative] = f"image unreadable: {path} ({type(error).__name__}: {error})"
    if cache[relative]:
        raise BadLine(cache[relative])


def _records_from_line(row: object, check_image) -> list[Record]:
    if not isinstance(row, dict):
        raise BadLine("line is not a JSON object")
    for key in ("id", "image", "conversations"):
        if key not in row:
            raise BadLine(f"missing field {key!r}")
    turns = row["conversations"]
    if not isinstance(turns, list) or not turns or len(turns) % 2:
        raise BadLine("conversations must be a non-empty list of human/gpt pairs")
    if row.get("answer_type") not in (None, *ANSWER_TYPES):
        raise BadLine(f"answer_type must be one of {ANSWER_TYPES}")
    if not isinstance(row["id"], (str, int)) or isinstance(row["id"], bool):
        raise BadLine("id must be a string or an integer")
    check_image(row["image"])
    pairs = []
    for turn in range(len(turns) // 2):
        human, gpt = turns[2 * turn], turns[2 * turn + 1]
        if not (isinstance(human, dict) and isinstance(gpt, dict)):
            raise BadLine(f"turn {turn}: conversation entries must be objects")
        if (human.get("from"), gpt.get("from")) != ("human", "gpt"):
            raise BadLine(f"turn {turn}: expected a human then a gpt message")
        if not (isinstance(human.get("value"), str) and isinstance(gpt.get("value"), str)):
            raise BadLine(f"turn {turn}: message values must be strings")
        try:
            for attempt in attempts(gpt.get("value") or ""):  # an Octopus response: each attempt in 4 stages
                parse_stages(attempt)
        except ReasoningFormatError as error:
            raise BadLine(f"turn {turn}: {error}") from None
        question = str(human.get("value") or "").replace(IMAGE_TOKEN, "").strip()
        if not question:
            raise BadLine(f"turn {turn}: empty question")
        pairs.append((question, gpt["value"]))
    base_id = namespaced_id(str(row["id"]), str(row["image"]))
    own = row.get("turn")
    if own is not None and (not isinstance(own, int) or isinstance(own, bool) or not 1 <= own == len(pairs) - 1):
        raise BadLine(f"turn must be the index of the line's last turn ({len(pairs) - 1}), got {own!r}")
    extras = {"answer": row.get("answer"), "answer_type": row.get("answer_type"), "tier": row.get("tier")}
    if own is not None:  # a follow-up turn written back (Record.to_llava_cot): one record
        return [Record(id=base_id, image=str(row["image"]), question=pairs[-1][0], response=pairs[-1][1],
                       context=tuple(pairs[:-1]), **extras)]
    return [Record(id=base_id if len(pairs) == 1 else f"{base_id}#{turn}", image=str(row["image"]),
                   question=question, response=response, context=tuple(pairs[:turn]), **extras)
            for turn, (question, response) in enumerate(pairs)]


def load_llava_cot(
    jsonl_path: str | Path,
    image_root: str | Path | None = None,
    quarantine_path: str | Path | None = None,
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
    check_images: bool = True,
) -> LoadedData:
    """Load and validate a LLaVA-CoT-style jsonl.

    Args:
        jsonl_path: the ``train.jsonl`` (or a subset written by :func:`write_llava_cot`).
        image_root: directory the ``image`` paths are relative to; defaults to the jsonl's folder.
        quarantine_path: where rejected lines go, one JSON object each with ``line``, ``reason`` and
            ``raw``; defaults to ``<jsonl>.quarantine.jsonl`` beside the input.
        max_bad_fraction: raise :class:`DataQualityError` when more than this fraction of the
            non-empty lines is quarantined.
        check_images: open and verify every referenced image (each distinct file once).
    """
    jsonl_path = Path(jsonl_path)
    image_root = Path(image_root) if image_root is not None else jsonl_path.parent
    quarantine_path = Path(quarantine_path or jsonl_path.with_suffix(".quarantine.jsonl"))
    if not jsonl_path.is_file():
        raise FileNotFoundError(f"data file not found: {jsonl_path}")
    if not 0 <= max_bad_fraction <= 1:
        raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")

    image_status: dict[str, str | None] = {}
    check = (lambda rel: check_image(image_root, rel, image_status)) if check_images else (lambda rel: None)
    seen_ids: set[str] = set()

    def records_of(row: object) -> list[Record]:
        new = _records_from_line(row, check)
        if (duplicate := next((r.id for r in new if r.id in seen_ids), None)) is not None:
            raise BadLine(f"duplicate id {duplicate!r}")
        seen_ids.update(r.id for r in new)
        return new

    records, num_lines, num_bad = read_checked_jsonl(jsonl_path, records_of, quarantine_path, max_bad_fraction,
                                                     "records")
    return LoadedData(jsonl_path, records, image_root, num_lines, num_bad, quarantine_path)


def read_checked_jsonl(path: Path, parse: Callable[[object], list], quarantine_path: Path, max_bad_fraction: float,
                       what: str) -> tuple[list, int, int]:
    """The items of a jsonl whose lines are UTF-8 JSON that ``parse`` turns into a list of items.

    A line that is not UTF-8 or not JSON, or for which ``parse`` raises :class:`BadLine`, goes to
    ``quarantine_path`` with its line number, reason and text (the file is written only when a line
    is bad). Returns (items, non-empty lines, bad lines); raises :class:`DataQualityError` when the
    file holds no line or more than ``max_bad_fraction`` of its lines are bad.
    """
    items: list = []
    num_lines, quarantined = 0, []
    with open(path, "rb") as source:
        for line_number, data in enumerate(tqdm(source, desc=f"loading {path.name}", unit=" lines"), 1):
            raw = data.decode("utf-8", errors="replace")
            if not raw.strip():
                continue
            num_lines += 1
            try:
                try:
                    data.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise BadLine(f"not UTF-8 text (byte {error.start}: {error.reason})") from None
                try:
                    row = json.loads(raw)
                except json.JSONDecodeError as error:
                    raise BadLine(f"malformed JSON: {error}") from None
                items.extend(parse(row))
            except BadLine as bad:
                quarantined.append({"line": line_number, "reason": str(bad), "raw": raw.rstrip("\n")})

    num_bad = len(quarantined)
    if quarantined and distributed.is_main():  # only when there is something to report (once: rank 0)
        write_jsonl(quarantined, quarantine_path)
    if num_lines == 0:
        raise DataQualityError(f"{path} holds no {what}")
    if num_bad / num_lines > max_bad_fraction:
        raise DataQualityError(
            f"{num_bad} of {num_lines} lines of {path} are invalid "
            f"({num_bad / num_lines:.1%} > limit {max_bad_fraction:.1%}); reasons per line in {quarantine_path}"
        )
    return items, num_lines, num_bad


def write_llava_cot(records: list[Record], jsonl_path: str | Path) -> None:
    """Write records as a LLaVA-CoT-100k style jsonl."""
    write_jsonl((record.to_llava_cot() for record in records), jsonl_path)


def load_data(path: str | Path) -> LoadedData:
    """Load a data set given as a subset directory (``<dir>/data.jsonl`` + images) or a jsonl file."""
    path = Path(path)
    if path.is_dir():
        path = path / DATA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no data set at {path}")
    return load_llava_cot(path)
