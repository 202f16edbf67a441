"""How a checkpoint self-corrects, written beside its weights (``self_correction.json``) so that every reader —
``sherlock serve``, the MLflow pyfunc, a deployment of the registered version — answers it as it was trained.

``{"correction": "prompt" | "continue", "response_format": "stages" | "think-boxed"}``: ``prompt`` (Sherlock,
SCL, STIC) asks a correction as a new turn R(Q, previous response); ``continue`` (Octopus, octopus-spec §2.2)
asks the question with the trigger instruction of ``response_format`` and continues the response after an
appended SEP. A checkpoint without the file answers Sherlock's way. The file is data from storage: anything but
these two keys with these values is refused.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from sherlock.answers import boxed_text
from sherlock.octopus import FORMATS
from sherlock.prompts import CORRECTIONS
from sherlock.reasoning import conclusion_text

PROTOCOL_FILE = "self_correction.json"


class ProtocolError(ValueError):
    """A ``self_correction.json`` that is not a protocol this package answers."""


@dataclass(frozen=True)
class Protocol:
    """How correction rounds ask (:data:`sherlock.prompts.CORRECTIONS`) and how an attempt is written
    (:data:`sherlock.octopus.FORMATS`).
    """

    correction: str = "prompt"
    response_format: str = "stages"

    def __post_init__(self):
        if self.correction not in CORRECTIONS:
            raise ProtocolError(f"correction must be one of {CORRECTIONS}, got {self.correction!r}")
        if self.response_format not in FORMATS:
            raise ProtocolError(f"response_format must be one of {tuple(FORMATS)}, got {self.response_format!r}")

    def answer(self, attempt: str) -> str | None:
        r"""An attempt's final answer: its CONCLUSION (``stages``) or its last ``\boxed{}`` (``think-boxed``)."""
        return conclusion_text(attempt) if self.response_format == "stages" else boxed_text(attempt)


SHERLOCK = Protocol()  # a new turn R(Q, previous response), 4-stage attempts: every checkpoint without the file


def read_protocol(directory: str | Path) -> Protocol:
    """The protocol of a checkpoint or data set directory (a data file: its folder's); Sherlock's without one."""
    folder = Path(directory)
    path = (folder if folder.is_dir() else folder.parent) / PROTOCOL_FILE
    if not path.is_file():
        return SHERLOCK
    try:
        fields = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ProtocolError(f"{path}: not JSON ({error})") from None
    if not isinstance(fields, dict) or not set(fields) <= {"correction", "response_format"} or not all(
            isinstance(value, str) for value in fields.values()):
        raise ProtocolError(f"{path}: expected {{'correction': str, 'response_format': str}}, got {fields!r:.200}")
    try:
        return Protocol(**fields)
    except ProtocolError as error:
        raise ProtocolError(f"{path}: {error}") from None


def write_protocol(directory: str | Path, protocol: Protocol) -> Path:
    """Write ``directory/self_correction.json``."""
    path = Path(directory) / PROTOCOL_FILE
    path.write_text(json.dumps(asdict(protocol)) + "\n", encoding="utf-8")
    return path
