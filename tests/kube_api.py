"""A stand-in for the Kubernetes API server's InferenceService endpoints, for the deploy tests.

There is no cluster on the test machines. This HTTP server answers the custom-object calls the
KServe SDK makes (get, create, JSON merge-patch) with Kubernetes' status codes and semantics
(404/409, ``metadata.generation`` bumped on spec changes) and plays the KServe controller by
reporting ``Ready`` at the current generation once ``ready_after_polls`` status reads have passed
(``None``: never). It records every request so the tests can check what was sent.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PATH = re.compile(r"^/apis/serving\.kserve\.io/v1beta1/namespaces/([^/]+)/inferenceservices(?:/([^/?]+))?")


def merge_patch(target, patch):
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class KubeAPI:
    def __init__(self, ready_after_polls: int | None = 2, forbidden: bool = False):
        self.objects: dict[tuple[str, str], dict] = {}
        self.requests: list[dict] = []
        self.polls: dict[tuple[str, str], int] = {}
        self.ready_after_polls, self.forbidden = ready_after_polls, forbidden
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": self.url}}],
            "users": [{"name": "test", "user": {"token": "test-token"}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test", "namespace": "default"}}]}))
        return path

    def close(self) -> None:
        self.server.shutdown()

    def _status(self, key):
        obj = self.objects[key]
        self.polls[key] = self.polls.get(key, 0) + 1
        if self.ready_after_polls is not None and self.polls[key] > self.ready_after_polls:
            namespace, name = key
            obj["status"] = {"observedGeneration": obj["metadata"]["generation"],
                             "url": f"http://{name}.{namespace}.example.com",
                             "conditions": [{"type": "Ready", "status": "True"}]}
        return obj

    def _handler(self):
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _error(self, code: int, reason: str) -> None:
                self._reply(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
                                   "code": code})

            def _handle(self, method: str) -> None:
                match = PATH.match(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                with api.lock:
                    api.requests.append({"method": method, "path": self.path, "body": body,
                                         "content_type": self.headers.get("Content-Type"),
                                         "authorization": self.headers.get("Authorization")})
                    if api.forbidden:
                        return self._error(403, "Forbidden")
                    if not match:
                        return self._error(404, "NotFound")
                    namespace, name = match.groups()
                    key = (namespace, name or (body or {}).get("metadata", {}).get("name"))
                    if method == "GET":
                        if key not in api.objects:
                            return self._error(404, "NotFound")
                        return self._reply(200, api._status(key))
                    if method == "POST":
                        if key in api.objects:
                            return self._error(409, "AlreadyExists")
                        body["metadata"] |= {"generation": 1, "resourceVersion": "1", "namespace": namespace}
                        api.objects[key] = body
                        return self._reply(201, body)
                    if method == "PATCH":
                        if key not in api.objects:
                            return self._error(404, "NotFound")
                        if self.headers.get("Content-Type") != "application/merge-patch+json":
                            return self._error(415, "UnsupportedMediaType")
                        old = api.objects[key]
                        new = merge_patch(old, body)
                        if new.get("spec") != old.get("spec"):
                            new["metadata"]["generation"] = old["metadata"]["generation"] + 1
                            api.polls[key] = 0
                        api.objects[key] = new
                        return self._reply(200, new)
                    return self._error(405, "MethodNotAllowed")

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

            def do_PATCH(self):
                self._handle("PATCH")

        return Handler
