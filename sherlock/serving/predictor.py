"""KServe predictor: a Sherlock checkpoint answering (image, question), optionally self-correcting.

Requests: v1 (``/v1/models/NAME:predict``, ``{"instances": [{"image", "question", …}]}``), Open
Inference Protocol v2 (``/v2/models/NAME/infer``, BYTES inputs ``image`` and ``question``, JSON or
binary tensors, settings as request parameters) and OpenAI chat completions
(:mod:`sherlock.serving.openai_api`). An image is base64, a ``data:image/…;base64,`` URI or, in a
v2 binary tensor, the raw bytes; PNG, JPEG and WebP only. The server fetches nothing on a caller's
behalf: URLs (``s3://``, ``https://``) are refused. Optional settings per instance:
``self_correction_rounds``, ``max_new_tokens``, ``temperature`` (0, the default: greedy),
``top_p``, ``seed``. Each answer holds the final answer, the full reasoning, every round's
response and answer, and the token usage. Rounds ask as the checkpoint says it was trained to
(``self_correction.json``, :mod:`sherlock.protocol`): Sherlock's new turn, or Octopus's continued response.

A request is checked off the event loop (sizes from the image headers, before any decoding),
admitted only within the :class:`Limits` on pending work (else 429 with Retry-After), decoded off
the event loop, then queued: concurrent queries wait ``batch_wait_ms`` to be answered together, up
to ``max_batch_size`` per generate call, grouped by their decoding settings. A request past
``request_timeout_s`` is answered 504; a request cancelled (deadline, or its client went away,
:class:`sherlock.serving.server.RequestGuard`) has its queued queries dropped before they reach a
batch. Inputs over the limits and malformed data are answered 400 (``InvalidInput``), never 5xx.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import logging
import re
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import kserve
from kserve import InferInput, InferOutput, InferRequest, InferResponse
from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER
from kserve.errors import InvalidInput
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.infer_type import deserialize_bytes_tensor
from kserve.protocol.rest.v2_datamodels import InferenceRequest
from PIL import Image, UnidentifiedImageError
from prometheus_client import Counter, Gauge
from pydantic import ValidationError

from sherlock.data.schema import IMAGE_FORMATS, to_rgb
from sherlock.serving.settings import Limits
from sherlock.storage import fetch

DATA_URI = re.compile(r"data:image/(?:png|jpeg|jpg|webp);base64,", re.IGNORECASE)
URL = re.compile(r"[a-z][a-z0-9+.-]*://", re.IGNORECASE)
MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")  # raw PNG and JPEG (WebP: RIFF....WEBP)


# Prometheus metrics, served with KServe's own on /metrics
QUERIES = Counter("sherlock_queries_total", "queries by outcome: answered, failed, dropped (their request was "
                  "cancelled before they reached a batch) or cancelled (while their batch ran)", ["outcome"])
OVERLOADED = Counter("sherlock_requests_overloaded_total", "requests answered 429 (pending-work limits)")
CANCELLED = Counter("sherlock_requests_cancelled_total", "requests cancelled: their client left or their deadline "
                    "passed")
PENDING = Gauge("sherlock_pending_instances", "instances admitted and not yet answered")


class Overloaded(Exception):
    """Admitting a request would pass a pending-work limit: answered 429 with Retry-After."""


class DeadlineExceeded(Exception):
    """A request was not answered within ``request_timeout_s``: answered 504."""


@dataclass(frozen=True)
class Decoding:
    """The settings a batch shares: rounds, new tokens and the direct answer's sampling."""

    rounds: int = 0
    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0


@dataclass
class Query:
    """One question about one image, validated, with its decoding settings."""
    question: str
    data: bytes  # the encoded image, checked but not yet decoded
    pixels: int
    decoding: Decoding
    key: str  # the sampling stream of this query (its seed, or a fresh id)
    image: Image.Image | None = None


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


def _number(value, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise InvalidInput(f"{name} must be a number in [{low}, {high}], got {value!r}")
    return float(value)


def image_bytes(value, limits: Limits) -> bytes:
    """An image input as encoded bytes: raw PNG/JPEG/WebP bytes, base64 text or a data URI."""
    if isinstance(value, bytes | bytearray):
        if value.startswith(MAGIC) or (value[:4] == b"RIFF" and value[8:12] == b"WEBP"):
            data = bytes(value)
            if len(data) > limits.max_image_bytes:
                raise InvalidInput(f"image is over the {limits.max_image_bytes}-byte limit")
            return data
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            raise InvalidInput("image bytes are neither a PNG/JPEG/WebP file nor base64 text") from None
    if not isinstance(value, str) or not value:
        raise InvalidInput("image must be a non-empty base64 string or a data:image/…;base64, URI")
    if URL.match(value):
        raise InvalidInput("image must be base64 or a data:image/…;base64, URI: the server fetches no URLs")
    if match := DATA_URI.match(value):
        value = value[match.end():]
    elif value[:5].lower() == "data:":
        raise InvalidInput("a data URI image must be data:image/png|jpeg|webp;base64,…")
    if len(value) > limits.max_image_bytes * 4 // 3 + 4:
        raise InvalidInput(f"image is over the {limits.max_image_bytes}-byte limit")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("image is not valid base64") from None
    if len(data) > limits.max_image_bytes:
        raise InvalidInput(f"image is over the {limits.max_image_bytes}-byte limit")
    return data


def image_pixels(data: bytes, limits: Limits) -> int:
    """Width x height from the image's header (nothing decoded); only PNG, JPEG and WebP are opened."""
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise InvalidInput("image is not a readable PNG, JPEG or WebP image") from None
    if width * height > limits.max_image_pixels:
        raise InvalidInput(f"image has {width}x{height} pixels, over the {limits.max_image_pixels} limit")
    return width * height


def decode_image(query: Query) -> None:
    """Decode a checked query's image (RGB, upright) and drop its encoded bytes."""
    try:
        with Image.open(io.BytesIO(query.data), formats=IMAGE_FORMATS) as image:
            query.image = to_rgb(image)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise InvalidInput("image is not a readable PNG, JPEG or WebP image (truncated or corrupt)") from None
    query.data = b""


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
    data = image_bytes(settings.get("image"), limits)
    decoding = Decoding(
        _integer(settings.get("self_correction_rounds", 0), "self_correction_rounds", 0, limits.max_rounds),
        _integer(settings.get("max_new_tokens", 512), "max_new_tokens", 1, limits.max_new_tokens),
        _number(settings.get("temperature", 0.0), "temperature", 0.0, 2.0),
        _number(settings.get("top_p", 1.0), "top_p", 1e-6, 1.0))
    seed = settings.get("seed")
    key = str(_integer(seed, "seed", -2**63, 2**63 - 1)) if seed is not None else uuid.uuid4().hex
    return Query(question, data, image_pixels(data, limits), decoding, key)


def parse_instances(instances: list, limits: Limits, defaults: dict | None = None) -> list[Query]:
    """Checked queries of one request: the instance count and the pixels of all its images within limits."""
    if len(instances) > limits.max_instances:
        raise InvalidInput(f"{len(instances)} instances, over the {limits.max_instances} limit")
    queries = [parse_instance(instance, limits, defaults) for instance in instances]
    if (pixels := sum(q.pixels for q in queries)) > limits.max_request_pixels:
        raise InvalidInput(f"the request's images have {pixels} pixels, over the {limits.max_request_pixels} limit")
    return queries


def parse_v1(payload, limits: Limits) -> list[Query]:
    """A v1 body; JSON sent without a JSON Content-Type (``curl -d``) arrives as bytes and is read here."""
    if isinstance(payload, bytes | str):
        try:
            payload = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            raise InvalidInput("the body is not JSON") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("instances"), list) or not payload["instances"]:
        raise InvalidInput('expected {"instances": [{"image": …, "question": …}, …]}')
    return parse_instances(payload["instances"], limits)


def parse_v2(request: InferRequest, limits: Limits) -> list[Query]:
    """A v2 request: BYTES ``image`` (base64, data URI or raw bytes) and UTF-8 ``question`` tensors."""
    columns = {}
    for tensor in request.inputs:
        if tensor.datatype != "BYTES":
            raise InvalidInput(f"input {tensor.name} must be BYTES, got {tensor.datatype}")
        columns[tensor.name] = list(tensor.data)
    if set(columns) != {"image", "question"} or len(columns["image"]) != len(columns["question"]):
        raise InvalidInput("expected two BYTES inputs of equal length: image and question")
    questions = []
    for value in columns["question"]:
        try:
            questions.append(value.decode("utf-8") if isinstance(value, bytes | bytearray) else value)
        except UnicodeDecodeError:
            raise InvalidInput("question is not valid UTF-8") from None
    instances = [{"image": image, "question": question} for image, question in zip(columns["image"], questions)]
    return parse_instances(instances, limits, dict(request.parameters or {}))


class RawBytesDataPlane(DataPlane):
    """KServe's data plane, except that binary BYTES tensors reach the model as bytes.

    kserve 0.21's ``InferRequest.from_bytes`` turns each element of a binary BYTES tensor into UTF-8
    text, so raw PNG bytes (the Open Inference Protocol's binary extension) fail there with a 500
    whose message holds the image. Here binary tensors are split as KServe splits them
    (``deserialize_bytes_tensor``) and kept as bytes; JSON bodies go to KServe's own decoding, also
    when they come without a JSON Content-Type (``curl -d``), which KServe refuses.
    """

    def decode_inference_request(self, body, headers, model_name: str) -> InferRequest:
        """KServe's decoding, with JSON accepted without a JSON Content-Type."""
        length = (headers or {}).get(INFERENCE_CONTENT_LENGTH_HEADER)
        if isinstance(body, bytes) and length is None:  # JSON sent without a JSON Content-Type (curl -d)
            try:
                body = InferenceRequest.model_validate_json(body)
            except ValidationError as error:
                raise InvalidInput(f"the body is not a v2 inference request: {error.errors()[0]['msg']}") from None
        if not isinstance(body, bytes):
            return super().decode_inference_request(body, headers, model_name)
        if not length.isdigit() or int(length) > len(body):
            raise InvalidInput(f"{INFERENCE_CONTENT_LENGTH_HEADER} must be the JSON header's length, got {length!r}")
        try:
            header = json.loads(body[:int(length)])
        except (ValueError, UnicodeDecodeError):
            raise InvalidInput("the JSON header of the binary request is not JSON") from None
        if not isinstance(header, dict) or not isinstance(header.get("inputs"), list) \
                or not all(isinstance(spec, dict) for spec in header["inputs"]):
            raise InvalidInput('the JSON header must be {"inputs": [{"name", "shape", "datatype", …}, …]}')
        start, inputs = int(length), []
        for spec in header["inputs"]:
            parameters = spec.get("parameters") or {}
            tensor = InferInput(str(spec.get("name")), spec.get("shape"), str(spec.get("datatype")), parameters)
            size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
            if size is None:
                tensor.data = spec.get("data") or []
            elif isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= len(body) - start:
                raise InvalidInput(f"input {tensor.name}: binary_data_size {size!r} does not fit the body")
            else:
                if tensor.datatype == "BYTES":
                    try:
                        tensor.data = list(deserialize_bytes_tensor(body[start:start + size]))
                    except Exception:
                        raise InvalidInput(f"input {tensor.name}: malformed binary BYTES tensor") from None
                start += size
            inputs.append(tensor)
        return InferRequest(model_name=model_name, infer_inputs=inputs, request_id=header.get("id"),
                            parameters=header.get("parameters"))


class SherlockPredictor(kserve.Model):
    """A checkpoint behind KServe's v1 and v2 protocols, with admission control and dynamic batching."""

    def __init__(self, name: str, model_uri: str, limits: Limits | None = None, max_batch_size: int = 8,
                 batch_wait_ms: float = 10.0):
        super().__init__(name)
        self.model_uri, self.limits = model_uri, limits or Limits()
        self.max_batch_size, self.batch_wait = max_batch_size, batch_wait_ms / 1000
        self.pending_instances = self.pending_pixels = 0
        self._decoder = ThreadPoolExecutor(2, thread_name_prefix="decode")  # parsing and decoding, off the loop
        self._generator = ThreadPoolExecutor(1, thread_name_prefix="generate")  # one model, one batch at a time
        self._queue: asyncio.Queue | None = None

    def load(self) -> bool:
        """Load the checkpoint and how it self-corrects (:mod:`sherlock.protocol`); KServe calls it once before
        serving.
        """
        import torch

        from sherlock.models.loading import load_vlm
        from sherlock.protocol import read_protocol

        checkpoint = resolve_checkpoint(self.model_uri)
        self.model, self.processor = load_vlm(checkpoint, dtype=torch.float32)
        self.protocol = read_protocol(checkpoint)
        self.ready = True
        return self.ready

    def get_input_types(self) -> list[dict]:
        """The v2 inputs: ``image`` and ``question``, one element per query."""
        return [{"name": "image", "datatype": "BYTES", "shape": [-1]},
                {"name": "question", "datatype": "BYTES", "shape": [-1]}]

    def get_output_types(self) -> list[dict]:
        """The v2 output: ``answer``, one element per query."""
        return [{"name": "answer", "datatype": "BYTES", "shape": [-1]}]

    async def predict(self, payload, headers=None, response_headers=None):
        """Answer a v1 (``instances``) or v2 (``InferRequest``) request."""
        if isinstance(payload, InferRequest):
            answers = await self.answer_request(partial(parse_v2, payload, self.limits))
            return InferResponse(model_name=self.name, infer_outputs=[InferOutput(
                "answer", [len(answers)], "BYTES", [json.dumps(a) for a in answers])],
                response_id=payload.id or str(uuid.uuid4()))
        return {"predictions": await self.answer_request(partial(parse_v1, payload, self.limits))}

    async def answer_request(self, parse: Callable[[], list[Query]]) -> list[dict]:
        """Parse (off the loop), admit, decode (off the loop), queue, and return the answers within the deadline."""
        loop = asyncio.get_running_loop()
        try:
            queries = await loop.run_in_executor(self._decoder, parse)
        except asyncio.CancelledError:
            CANCELLED.inc()
            raise
        pixels = sum(q.pixels for q in queries)
        if (self.pending_instances + len(queries) > self.limits.max_pending_instances
                or self.pending_pixels + pixels > self.limits.max_pending_pixels):
            OVERLOADED.inc()
            raise Overloaded(f"the server has {self.pending_instances} instances ({self.pending_pixels} pixels) "
                             "pending; retry later")
        self.pending_instances += len(queries)
        self.pending_pixels += pixels
        PENDING.set(self.pending_instances)
        try:
            return await asyncio.wait_for(self._answer(queries), self.limits.request_timeout_s)
        except TimeoutError:
            CANCELLED.inc()
            raise DeadlineExceeded(f"not answered within {self.limits.request_timeout_s} s") from None
        except asyncio.CancelledError:
            CANCELLED.inc()
            raise
        finally:
            self.pending_instances -= len(queries)
            self.pending_pixels -= pixels
            PENDING.set(self.pending_instances)

    async def _answer(self, queries: list[Query]) -> list[dict]:
        loop = asyncio.get_running_loop()
        for query in queries:
            await loop.run_in_executor(self._decoder, decode_image, query)
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._batcher_task = loop.create_task(self._batcher())  # held: the loop keeps only weak references
            self._batcher_task.add_done_callback(self._batcher_ended)
        futures = [loop.create_future() for _ in queries]
        for query, future in zip(queries, futures):
            self._queue.put_nowait((query, future))
        return list(await asyncio.gather(*futures))  # cancelled: gather cancels the futures, the batcher skips them

    def _batcher_ended(self, task: asyncio.Task) -> None:
        """Should the batcher ever end, nothing would answer: readiness turns false, and the reason is logged."""
        self.ready = False
        if not task.cancelled() and task.exception() is not None:
            logging.getLogger(__name__).error("the batcher stopped", exc_info=task.exception())

    async def _batcher(self) -> None:
        """Collect queued queries for ``batch_wait`` (up to ``max_batch_size``) and answer them together.

        Queries of cancelled requests are dropped; a failed batch fails its requests, not the batcher.
        """
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            if self._queue.qsize() < self.max_batch_size - 1:
                await asyncio.sleep(self.batch_wait)  # the window in which concurrent requests join
            while len(batch) < self.max_batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            groups: dict[Decoding, list] = {}
            for query, future in batch:
                groups.setdefault(query.decoding, []).append((query, future))
            for group in groups.values():
                live = [(query, future) for query, future in group if not future.done()]
                QUERIES.labels("dropped").inc(len(group) - len(live))
                if not live:
                    continue
                def abandoned(futures=tuple(future for _, future in live)) -> bool:
                    return all(future.done() for future in futures)  # every request of the batch was cancelled

                try:
                    answers = await loop.run_in_executor(self._generator, self.answer, [q for q, _ in live], abandoned)
                except Exception as error:
                    answers = [error] * len(live)
                for (_, future), answer in zip(live, answers):
                    if future.done():  # cancelled while its batch ran (generation stops once all are)
                        QUERIES.labels("cancelled").inc()
                        continue
                    QUERIES.labels("failed" if isinstance(answer, Exception) else "answered").inc()
                    if isinstance(answer, Exception):
                        future.set_exception(answer)
                    else:
                        future.set_result(answer)

    def answer(self, queries: list[Query], abandoned: Callable[[], bool] | None = None) -> list[dict]:
        """Answer queries that share their :class:`Decoding` with one generate call per round, cut short
        once ``abandoned()`` is true; the rounds ask as the checkpoint was trained to (:mod:`sherlock.protocol`:
        a new turn R(Q, previous), or Octopus's response continued after SEP, whose ``reasoning`` is then the
        whole response ``o1 ⊕ SEP ⊕ o2 …``).

        ``usage`` counts the tokens of every round's prompt and response (the texts re-tokenized;
        the image as its placeholder tokens in the prompt); ``finish_reason`` is ``length`` when
        the last response stopped at ``max_new_tokens`` before its answer closed.
        """
        from sherlock.chat import user_turn
        from sherlock.decoding import DecodingConfig
        from sherlock.generation import answer_as_trained
        from sherlock.octopus import FORMATS, trigger_prompt
        from sherlock.prompts import correction_prompt
        from sherlock.reasoning import SEP

        decoding, protocol = queries[0].decoding, self.protocol
        config = DecodingConfig(decoding.max_new_tokens, decoding.temperature, decoding.top_p, len(queries))
        rounds = answer_as_trained(self.model, self.processor, [q.question for q in queries],
                                   [q.image for q in queries], decoding.rounds, config, protocol,
                                   keys=[q.key for q in queries], abandoned=abandoned)
        tokenizer, response_format = self.processor.tokenizer, FORMATS[protocol.response_format]

        def tokens(text: str) -> int:
            return len(tokenizer(text, add_special_tokens=False).input_ids)

        def asked(prompt: str) -> int:
            return tokens(self.processor.apply_chat_template([user_turn(prompt)], add_generation_prompt=True))

        answers = []
        for query, responses in zip(queries, zip(*rounds)):
            if protocol.correction == "continue":  # every round: the trigger prompt and the response so far + SEP
                prompt = asked(trigger_prompt(query.question, response_format))
                prompt_tokens = sum(prompt + tokens(SEP.join(responses[:k]) + SEP * (k > 0))
                                    for k in range(len(responses)))
                reasoning = SEP.join(responses)
            else:
                prompt_tokens = sum(asked(p) for p in [query.question] + [correction_prompt(query.question, r)
                                                                             for r in responses[:-1]])
                reasoning = responses[-1]
            completion = [tokens(r) for r in responses]
            cut = response_format.answer_end(responses[-1]) is None and completion[-1] >= decoding.max_new_tokens
            answers.append({"answer": protocol.answer(responses[-1]), "reasoning": reasoning,
                            "rounds": [{"response": r, "answer": protocol.answer(r)} for r in responses],
                            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": sum(completion)},
                            "finish_reason": "length" if cut else "stop"})
        return answers
