"""OpenAI-compatible chat completions on the predictor: ``PREFIX/v1/chat/completions`` and ``PREFIX/v1/models``.

KServe serves these paths (prefix ``/openai``, set by ``KSERVE_OPENAI_ROUTE_PREFIX``) only for
vLLM-backed models; here they answer from the same :class:`SherlockPredictor`, with its limits,
admission, batching and deadline. A request holds one user message whose content is text parts
(the question) and one ``image_url`` part whose URL is a ``data:image/…;base64,`` URI (no URL is
fetched). Supported: ``max_tokens`` / ``max_completion_tokens`` (per round), ``temperature``
(omitted: 0, greedy, as the model is evaluated), ``top_p``, ``seed`` (same seed, same sample),
``n = 1``, ``stream`` (server-sent events of the final response; ``stream_options.include_usage``),
``user`` (not used). The extension ``self_correction_rounds`` (the ``openai`` client sends it with
``extra_body``) runs that many correction rounds; the message is the last round's response and the
extension field ``self_correction`` lists every round's response and answer. Any other parameter
is refused (400 naming it), and errors have OpenAI's shape ``{"error": {message, type, param, code}}``.
"""

from __future__ import annotations

import json
import time
import uuid
from functools import partial

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from kserve.errors import InvalidInput

from sherlock.serving.predictor import DeadlineExceeded, Overloaded, SherlockPredictor, parse_instances

FIELDS = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "n", "stream",
          "stream_options", "user", "self_correction_rounds"}
SETTINGS = ("temperature", "top_p", "seed", "self_correction_rounds")  # passed on to the predictor as given


class OpenAIError(Exception):
    """An error answered in OpenAI's shape with its HTTP status."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.kind, self.param, self.code, self.headers = status, kind, param, code, headers

    def response(self) -> JSONResponse:
        """The error as OpenAI's ``{"error": {...}}`` body with its status."""
        error = {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}
        return JSONResponse({"error": error}, status_code=self.status, headers=self.headers)


def _content_parts(message) -> list:
    if not isinstance(message, dict) or message.get("role") != "user":
        raise OpenAIError(400, "messages must be one user message holding the question and one image: system "
                               "prompts and earlier turns are not supported (the model answers one question about "
                               "one image)", param="messages")
    content = message.get("content")
    parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
    if not isinstance(parts, list):
        raise OpenAIError(400, "message content must be a string or a list of content parts", param="messages")
    return parts


def chat_instance(body, model_name: str) -> tuple[dict, bool, bool]:
    """A chat completion body → (the predictor instance, stream?, include usage in the stream?)."""
    if not isinstance(body, dict):
        raise OpenAIError(400, "the body must be a JSON object")
    if unknown := sorted(set(body) - FIELDS):
        raise OpenAIError(400, f"unsupported parameter {unknown[0]!r}", param=unknown[0])
    if body.get("model") != model_name:
        raise OpenAIError(404, f"the model {body.get('model')!r} does not exist; this server serves {model_name!r}",
                          param="model", code="model_not_found")
    if body.get("n", 1) != 1:
        raise OpenAIError(400, "only n = 1 is supported", param="n")
    messages = body.get("messages")
    if not isinstance(messages, list) or len(messages) != 1:
        raise OpenAIError(400, "messages must be a list of one user message", param="messages")
    texts, images = [], []
    for part in _content_parts(messages[0]):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url" and isinstance(part.get("image_url"), dict) \
                and isinstance(part["image_url"].get("url"), str):
            images.append(part["image_url"]["url"])
        else:
            raise OpenAIError(400, f"unsupported content part of type {str(kind)[:40]!r}: expected text or "
                                   "image_url", param="messages")
    if len(images) != 1:
        raise OpenAIError(400, f"the message must hold exactly one image_url part, got {len(images)}",
                          param="messages")
    instance = {"image": images[0], "question": "\n".join(texts)}
    if (tokens := body.get("max_completion_tokens", body.get("max_tokens"))) is not None:
        instance["max_new_tokens"] = tokens
    instance |= {key: body[key] for key in SETTINGS if body.get(key) is not None}
    stream, options = body.get("stream") or False, body.get("stream_options") or {}
    if not isinstance(stream, bool) or not isinstance(options, dict):
        raise OpenAIError(400, "stream must be a boolean and stream_options an object", param="stream")
    return instance, stream, bool(options.get("include_usage"))


def completion(answer: dict, model_name: str) -> dict:
    """A ``chat.completion`` object from the predictor's answer (see :meth:`SherlockPredictor.answer`)."""
    usage = answer["usage"] | {"total_tokens": answer["usage"]["prompt_tokens"] + answer["usage"]["completion_tokens"]}
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer["reasoning"]},
                         "finish_reason": answer["finish_reason"], "logprobs": None}],
            "usage": usage, "self_correction": {"answer": answer["answer"], "rounds": answer["rounds"]}}


def events(result: dict, include_usage: bool):
    """Server-sent ``chat.completion.chunk`` events of a finished completion, then ``[DONE]``."""
    head = {key: result[key] for key in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
    choice = result["choices"][0]
    chunks = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
              {"choices": [{"index": 0, "delta": {"content": choice["message"]["content"]}, "finish_reason": None}]},
              {"choices": [{"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}],
               "self_correction": result["self_correction"]}]
    if include_usage:
        chunks.append({"choices": [], "usage": result["usage"]})
    for chunk in chunks:
        yield f"data: {json.dumps(head | chunk)}\n\n"
    yield "data: [DONE]\n\n"


def openai_router(predictor: SherlockPredictor, prefix: str) -> APIRouter:
    """``GET PREFIX/v1/models`` and ``POST PREFIX/v1/chat/completions`` for ``predictor``."""
    router = APIRouter(prefix=f"{prefix}/v1")
    created = int(time.time())

    @router.get("/models")
    async def models():
        return {"object": "list",
                "data": [{"id": predictor.name, "object": "model", "created": created, "owned_by": "sherlock"}]}

    @router.post("/chat/completions")
    async def chat_completions(request: Request):
        try:
            try:
                body = json.loads(await request.body())
            except ValueError:
                raise OpenAIError(400, "the body is not JSON") from None
            instance, stream, include_usage = chat_instance(body, predictor.name)
            (answer,) = await predictor.answer_request(partial(parse_instances, [instance], predictor.limits))
        except OpenAIError as error:
            return error.response()
        except InvalidInput as error:
            return OpenAIError(400, str(error)).response()
        except Overloaded as error:
            return OpenAIError(429, str(error), "rate_limit_error", headers={"Retry-After": "1"}).response()
        except DeadlineExceeded as error:
            return OpenAIError(504, str(error), "timeout").response()
        result = completion(answer, predictor.name)
        if stream:
            return StreamingResponse(events(result, include_usage), media_type="text/event-stream")
        return result

    return router
