"""A stand-in for the Kubernetes API server's custom-object endpoints, for the deploy and TrainJob tests.

There is no cluster on the test machines. This HTTP server answers the custom-object calls the
KServe SDK and the Kubeflow SDK make (get, create, delete, JSON merge-patch; namespaced or
cluster-scoped) with Kubernetes' status codes and semantics (404/409, ``metadata.generation`` bumped
on spec changes), lists no pods, and plays the KServe controller by reporting an InferenceService
``Ready`` at the current generation once ``ready_after_polls`` status reads have passed (``None``:
never); no controller runs anything else (a test sets a TrainJob's status itself). It records every
request so the tests can check what was sent. With ``tls_dir`` it serves HTTPS, as the API server does,
under a certificate for 127.0.0.1 whose CA file is ``ca_file``.
"""

from __future__ import annotations

import json
import re
import ssl
import threading
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from servers import self_signed_certificate

# /apis/<group>/<version>[/namespaces/<namespace>]/<plural>[/<name>]
PATH = re.compile(r"^/apis/[^/]+/[^/]+/(?:namespaces/([^/]+)/)?([a-z]+)(?:/([^/?]+))?(?:\?.*)?$")
PODS = re.compile(r"^/api/v1/namespaces/[^/]+/pods(?:\?.*)?$")


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
    def __init__(self, ready_after_polls: int | None = 2, forbidden: bool = False, tls_dir: Path | None = None):
        # plural -> (namespace or "", name) -> object
        self.resources: dict[str, dict[tuple[str, str], dict]] = defaultdict(dict)
        self.objects = self.resources["inferenceservices"]
        self.requests: list[dict] = []
        self.polls: dict[tuple[str, str], int] = {}
        self.ready_after_polls, self.forbidden = ready_after_polls, forbidden
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        if tls_dir is not None:
            self.ca_file = self_signed_certificate(tls_dir)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.ca_file, tls_dir / "server.key")
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            self.url = f"https://127.0.0.1:{self.port}"
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

    def _status(self, plural, key):
        obj = self.resources[plural][key]
        if plural != "inferenceservices":
            return obj
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
                    if method == "GET" and PODS.match(self.path):
                        return self._reply(200, {"kind": "PodList", "apiVersion": "v1", "items": []})
                    if not match:
                        return self._error(404, "NotFound")
                    namespace, plural, name = match.groups()
                    objects = api.resources[plural]
                    key = (namespace or "", name or (body or {}).get("metadata", {}).get("name"))
                    if method == "GET":
                        if key not in objects:
                            return self._error(404, "NotFound")
                        return self._reply(200, api._status(plural, key))
                    if method == "POST":
                        if key in objects:
                            return self._error(409, "AlreadyExists")
                        body["metadata"] |= {"generation": 1, "resourceVersion": "1", "namespace": namespace,
                                             "uid": str(uuid.uuid4()), "creationTimestamp": datetime.now(
                                                 UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
                        objects[key] = body
                        return self._reply(201, body)
                    if method == "DELETE":
                        if objects.pop(key, None) is None:
                            return self._error(404, "NotFound")
                        return self._reply(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})
                    if method == "PATCH":
                        if key not in objects:
                            return self._error(404, "NotFound")
                        if self.headers.get("Content-Type") != "application/merge-patch+json":
                            return self._error(415, "UnsupportedMediaType")
                        old = objects[key]
                        new = merge_patch(old, body)
                        if new.get("spec") != old.get("spec"):
                            new["metadata"]["generation"] = old["metadata"]["generation"] + 1
                            api.polls[key] = 0
                        objects[key] = new
                        return self._reply(200, new)
                    return self._error(405, "MethodNotAllowed")

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

            def do_PATCH(self):
                self._handle("PATCH")

            def do_DELETE(self):
                self._handle("DELETE")

        return Handler
