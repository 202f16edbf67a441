"""``sherlock serve``: the predictor in KServe's REST server (v1, v2 and OpenAI-compatible chat).

The socket is bound before the model loads, so a taken port fails at once with its reason, and
listens only once the model is loaded (readiness probes fail until then). :class:`RequestGuard`
bounds the body and cancels a request whose client went away; :class:`ClosedRoutes` keeps KServe's
model-repository routes and the API docs closed and liveness honest; :class:`BearerToken` (with
``--token-file``) refuses a request without the token. After SIGTERM the socket stops accepting (a new
connection is refused) and requests in flight get their deadline to finish. gRPC is not served: the
limits and cancellation here are enforced on HTTP only.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import signal
import socket
import sys
from collections.abc import Callable

from sherlock.serving.settings import Limits, ServeConfig


class ServeError(RuntimeError):
    """The server cannot start (e.g. its address is taken)."""


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (not yet listening); a clear :class:`ServeError` when it cannot be."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as error:
        raise ServeError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    return sock


def grace_period(request_timeout_s: float) -> int:
    """Seconds the drain after SIGTERM waits for requests in flight: the request deadline and 5 s more."""
    return math.ceil(request_timeout_s) + 5


def error_body(path: str, prefix: str, message: str, kind: str) -> bytes:
    """An error in the route's own shape: OpenAI's ``{"error": {…}}`` under the prefix, KServe's otherwise."""
    if path.startswith(prefix + "/v1/"):
        return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": None}}).encode()
    return json.dumps({"error": message}).encode()


class RequestGuard:
    """ASGI middleware: reads an HTTP body whole, up to ``max_body_bytes`` (413 past it, from the
    Content-Length when there is one), then runs the app; when the client disconnects before the
    response is complete, the app's task is cancelled (the predictor drops its queued queries).
    """

    def __init__(self, app, max_body_bytes: int, openai_prefix: str):
        self.app, self.max_body_bytes, self.openai_prefix = app, max_body_bytes, openai_prefix

    async def _refuse(self, scope, send, status: int, message: str, kind: str) -> None:
        await respond(send, status, error_body(scope["path"], self.openai_prefix, message, kind))

    async def __call__(self, scope, receive, send):
        """Refuse an oversized body before the app reads it; pass everything else on."""
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = f"the request body is over the {self.max_body_bytes}-byte limit"
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_body_bytes:
            return await self._refuse(scope, send, 413, too_large, "invalid_request_error")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:
                return await self._refuse(scope, send, 413, too_large, "invalid_request_error")
            if not message.get("more_body"):
                break
        body, delivered, complete = b"".join(chunks), False, False
        disconnected = asyncio.Event()

        async def replay():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await disconnected.wait()
            return {"type": "http.disconnect"}

        async def tracked_send(message):
            nonlocal complete
            await send(message)
            complete = complete or (message["type"] == "http.response.body" and not message.get("more_body"))

        app = asyncio.ensure_future(self.app(scope, replay, tracked_send))

        async def watch():
            while (await receive())["type"] != "http.disconnect":
                pass
            disconnected.set()
            if not complete:
                app.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            await app
        except asyncio.CancelledError:
            if not disconnected.is_set():
                raise
        finally:
            watcher.cancel()


CLOSED_PREFIXES = ("/v2/repository/", "/openapi.json", "/docs", "/redoc")  # KServe's and FastAPI's, not served


class ClosedRoutes:
    """ASGI middleware: KServe's model-repository extension (``POST /v2/repository/models/<name>/unload``:
    one anonymous call left the predictor answering 404 while liveness stayed 200) and FastAPI's API docs
    answer 404; liveness (``GET /``) answers 503 once ``ready()`` is false (the predictor's batcher ended),
    so the kubelet restarts the pod. KServe registers both on every server and always answers liveness.
    """

    def __init__(self, app, ready: Callable[[], bool]):
        self.app, self.ready = app, ready

    async def __call__(self, scope, receive, send):
        """Refuse a closed route, or liveness of a model that is no longer ready; pass the rest on."""
        if scope["type"] == "http" and scope["path"].startswith(CLOSED_PREFIXES):
            return await respond(send, 404, json.dumps({"error": "Not Found"}).encode())
        if scope["type"] == "http" and scope["path"] == "/" and not self.ready():
            return await respond(send, 503, json.dumps({"error": "the model is no longer ready"}).encode())
        return await self.app(scope, receive, send)


async def respond(send, status: int, body: bytes, headers: tuple = ()) -> None:
    """Send a whole JSON response of ``status`` and close the connection."""
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *headers]})
    await send({"type": "http.response.body", "body": body})


class BearerToken:
    """ASGI middleware: every HTTP request but the health probes (``probes``: the kubelet sends no
    credentials) must carry ``Authorization: Bearer <token>``, compared in constant time; else 401 with
    ``WWW-Authenticate: Bearer``, before the body is read. OpenAI's client sends its ``api_key`` this way.
    """

    def __init__(self, app, token: str, probes: frozenset[str], openai_prefix: str):
        self.app, self.probes, self.openai_prefix = app, probes, openai_prefix
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope, receive, send):
        """Pass a probe or a request with the token on; refuse anything else."""
        if scope["type"] != "http" or (scope["method"] == "GET" and scope["path"] in self.probes):
            return await self.app(scope, receive, send)
        if hmac.compare_digest(dict(scope["headers"]).get(b"authorization", b""), self.expected):
            return await self.app(scope, receive, send)
        body = error_body(scope["path"], self.openai_prefix, "a valid bearer token is required", "authentication_error")
        await respond(send, 401, body, ((b"www-authenticate", b"Bearer"),))


def probe_paths(name: str) -> frozenset[str]:
    """The health routes of model ``name`` (liveness, readiness, v1 and v2), served without a token."""
    return frozenset({"/", "/v2/health/live", "/v2/health/ready", f"/v1/models/{name}", f"/v2/models/{name}/ready"})


def serve(config: ServeConfig) -> None:
    """Bind, load ``config.model`` (path, ``s3://`` or ``models:/<name>@<alias>``), then serve until SIGTERM."""
    sock = bind(config.host, config.http_port)
    sys.argv = sys.argv[:1]  # kserve parses sys.argv when imported
    from fastapi.responses import ORJSONResponse
    from kserve import logging as kserve_logging
    from kserve.model_repository import ModelRepository
    from kserve.model_server import app
    from kserve.protocol.model_repository_extension import ModelRepositoryExtension
    from kserve.protocol.rest.server import RESTServer

    from sherlock.serving.openai_api import openai_router
    from sherlock.serving.predictor import DeadlineExceeded, Overloaded, RawBytesDataPlane, SherlockPredictor

    kserve_logging.configure_logging()
    limits = Limits(**{name: getattr(config, name) for name in Limits.__dataclass_fields__})
    predictor = SherlockPredictor(config.name, config.model, limits, config.max_batch_size, config.batch_wait_ms)
    predictor.load()
    repository = ModelRepository()
    repository.update(predictor)
    # a request may run request_timeout_s: the drain after SIGTERM waits that long (plus a margin) for it
    server = RESTServer("kserve.model_server:app", RawBytesDataPlane(model_registry=repository),
                        ModelRepositoryExtension(model_registry=repository), config.http_port, workers=1,
                        grace_period=grace_period(config.request_timeout_s))

    def refuse(status: int, headers: dict | None = None):
        return lambda request, error: ORJSONResponse({"error": str(error)}, status_code=status, headers=headers)

    app.add_exception_handler(Overloaded, refuse(429, {"Retry-After": "1"}))
    app.add_exception_handler(DeadlineExceeded, refuse(504))
    app.include_router(openai_router(predictor, config.openai_route_prefix))
    app.add_middleware(RequestGuard, max_body_bytes=config.max_body_bytes, openai_prefix=config.openai_route_prefix)
    app.add_middleware(ClosedRoutes, ready=lambda: predictor.ready)
    if config.token_file:  # outermost: an unauthenticated request is refused before its body is read
        app.add_middleware(BearerToken, token=config.token(), probes=probe_paths(config.name),
                           openai_prefix=config.openai_route_prefix)
    host, port = sock.getsockname()[:2]
    print(f"model {config.name} loaded from {config.model}; serving on http://{host}:{port} (v1, v2 and "
          f"{config.openai_route_prefix}/v1/chat/completions)", flush=True)
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then raises the signal again under the handler
    # it found: with this one the process then exits 0 instead of dying by the signal
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, lambda number, frame: None)
    server.run(sockets=[sock])
