"""KServe predictor: a Sherlock checkpoint answering (image, question), optionally self-correcting.

Requests (v1 ``/v1/models/NAME:predict`` or Open Inference Protocol v2 ``/v2/models/NAME/infer``)
carry per instance an ``image`` (base64, or an ``s3://`` URI) and a ``question``, and optionally
``self_correction_rounds`` and ``max_new_tokens`` (v2: request parameters). Each answer holds the
final CONCLUSION, the full reasoning, and every round's response and answer. Concurrent requests
are collected for ``batch_wait_ms`` into batches of up to ``max_batch_size`` and answered by one
generate call per (rounds, max_new_tokens) group. Inputs over the :class:`Limits` and malformed
data are answered 400 (``InvalidInput``), never 5xx.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import uuid
from dataclasses import dataclass
from pathlib import Path

import kserve
from kserve import InferOutput, InferRequest, InferResponse
from kserve.errors import InvalidInput
from PIL import Image, UnidentifiedImageError

from sherlock.storage import fetch, is_s3


@dataclass
class Limits:
    """Request limits; anything beyond them is a 400 with the limit named."""

    max_image_bytes: int = 8 * 1024 * 1024
    max_image_pixels: int = 2048 * 2048
    max_question_chars: int = 4000
    max_rounds: int = 3
    max_new_tokens: int = 1024
    max_instances: int = 64


@dataclass
class Query:
    question: str
    image: Image.Image
    rounds: int
    max_new_tokens: int


def resolve_checkpoint(uri: str) -> Path:
    """A local checkpoint directory for a path, an ``s3://`` URI or ``models:/<name>@<alias>``."""
    if uri.startswith("models:/"):
        from sherlock.tracking import download_checkpoint

        return download_checkpoint(uri)
    return fetch(uri)


def _integer(value, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return value


def decode_image(value, limits: Limits) -> Image.Image:
    if not isinstance(value, str) or not value:
        raise InvalidInput("image must be a non-empty base64 string or an s3:// URI")
    if is_s3(value):
        try:
            data = fetch(value).read_bytes()
        except (FileNotFoundError, OSError) as error:
            raise InvalidInput(f"image {value}: {error}") from None
    else:
        if len(value) > limits.max_image_bytes * 4 // 3 + 4:
            raise InvalidInput(f"image is over the {limits.max_image_bytes}-byte limit")
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput("image is not valid base64") from None
    if len(data) > limits.max_image_bytes:
        raise InvalidInput(f"image is over the {limits.max_image_bytes}-byte limit")
    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > limits.max_image_pixels:
            raise InvalidInput(f"image has {image.width}x{image.height} pixels, "
                               f"over the {limits.max_image_pixels} limit")
        return image.convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        raise InvalidInput("image is not a readable PNG/JPEG/WebP image") from None


def parse_instance(instance, limits: Limits, defaults: dict | None = None) -> Query:
    """One request instance (``image``, ``question`` and optional settings) → a checked :class:`Query`."""
    if not isinstance(instance, dict):
        raise InvalidInput(f"each instance must be an object with image and question, got {type(instance).__name__}")
    settings = {**(defaults or {}), **instance}
    question = settings.get("question")
    if not isinstance(question, str) or not question.strip():
        raise InvalidInput("question must be a non-empty string")
    if len(question) > limits.max_question_chars:
        raise InvalidInput(f"question has {len(question)} characters, over the {limits.max_question_chars} limit")
    return Query(question, decode_image(settings.get("image"), limits),
                 _integer(settings.get("self_correction_rounds", 0), "self_correction_rounds", 0, limits.max_rounds),
                 _integer(settings.get("max_new_tokens", 512), "max_new_tokens", 1, limits.max_new_tokens))


def parse_v1(payload, limits: Limits) -> list[Query]:
    if not isinstance(payload, dict) or not isinstance(payload.get("instances"), list) or not payload["instances"]:
        raise InvalidInput('expected {"instances": [{"image": …, "question": …}, …]}')
    if len(payload["instances"]) > limits.max_instances:
        raise InvalidInput(f"{len(payload['instances'])} instances, over the {limits.max_instances} limit")
    return [parse_instance(i, limits) for i in payload["instances"]]


def parse_v2(request: InferRequest, limits: Limits) -> list[Query]:
    columns = {}
    for tensor in request.inputs:
        if tensor.datatype != "BYTES":
            raise InvalidInput(f"input {tensor.name} must be BYTES, got {tensor.datatype}")
        columns[tensor.name] = [v.decode() if isinstance(v, bytes) else v for v in tensor.data]
    if set(columns) != {"image", "question"} or len(columns["image"]) != len(columns["question"]):
        raise InvalidInput("expected two BYTES inputs of equal length: image and question")
    if len(columns["image"]) > limits.max_instances:
        raise InvalidInput(f"{len(columns['image'])} instances, over the {limits.max_instances} limit")
    defaults = dict(request.parameters or {})
    return [parse_instance({"image": image, "question": question}, limits, defaults)
            for image, question in zip(columns["image"], columns["question"])]


class SherlockPredictor(kserve.Model):
    """A checkpoint behind KServe's v1 and v2 protocols, with dynamic batching."""

    def __init__(self, name: str, model_uri: str, limits: Limits | None = None, max_batch_size: int = 8,
                 batch_wait_ms: float = 10.0):
        super().__init__(name)
        self.model_uri, self.limits = model_uri, limits or Limits()
        self.max_batch_size, self.batch_wait = max_batch_size, batch_wait_ms / 1000
        self._queue: asyncio.Queue | None = None

    def load(self) -> bool:
        import torch

        from sherlock.models.loading import load_vlm

        self.model, self.processor = load_vlm(resolve_checkpoint(self.model_uri), dtype=torch.float32)
        self.ready = True
        return self.ready

    async def predict(self, payload, headers=None, response_headers=None):
        if isinstance(payload, InferRequest):
            answers = await self._answer_all(parse_v2(payload, self.limits))
            return InferResponse(model_name=self.name, infer_outputs=[InferOutput(
                "answer", [len(answers)], "BYTES", [json.dumps(a) for a in answers])],
                response_id=payload.id or str(uuid.uuid4()))
        return {"predictions": await self._answer_all(parse_v1(payload, self.limits))}

    async def _answer_all(self, queries: list[Query]) -> list[dict]:
        if self._queue is None:
            self._queue = asyncio.Queue()
            asyncio.get_running_loop().create_task(self._batcher())
        futures = []
        for query in queries:
            futures.append(asyncio.get_running_loop().create_future())
            await self._queue.put((query, futures[-1]))
        return list(await asyncio.gather(*futures))

    async def _batcher(self) -> None:
        """Collect queued queries for ``batch_wait`` (up to ``max_batch_size``) and answer them together."""
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            if self._queue.qsize() < self.max_batch_size - 1:
                await asyncio.sleep(self.batch_wait)  # the window in which concurrent requests join
            while len(batch) < self.max_batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            groups: dict[tuple[int, int], list] = {}
            for query, future in batch:
                groups.setdefault((query.rounds, query.max_new_tokens), []).append((query, future))
            for group in groups.values():
                try:
                    answers = await loop.run_in_executor(None, self.answer, [q for q, _ in group])
                except Exception as error:  # a failed batch fails its requests, not the batcher
                    for _, future in group:
                        future.set_exception(error)
                    continue
                for (_, future), answer in zip(group, answers):
                    future.set_result(answer)

    def answer(self, queries: list[Query]) -> list[dict]:
        """Answer queries that share rounds and max_new_tokens with one generate call per round."""
        from sherlock.generation import DecodingConfig, answer_with_corrections
        from sherlock.reasoning import conclusion_text

        config = DecodingConfig(max_new_tokens=queries[0].max_new_tokens, batch_size=len(queries))
        rounds = answer_with_corrections(self.model, self.processor, [q.question for q in queries],
                                         [q.image for q in queries], queries[0].rounds, config)
        return [{"answer": conclusion_text(responses[-1]), "reasoning": responses[-1],
                 "rounds": [{"response": r, "answer": conclusion_text(r)} for r in responses]}
                for responses in zip(*rounds)]
