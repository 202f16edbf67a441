"""``sherlock serve``: the predictor in KServe's ModelServer (v1 and v2 REST; gRPC when given a port)."""

from __future__ import annotations

import sys

from sherlock.serving.predictor import Limits, SherlockPredictor


def serve(model_uri: str, name: str = "sherlock", http_port: int = 8080, grpc_port: int = 0,
          max_batch_size: int = 8, batch_wait_ms: float = 10.0, limits: Limits | None = None) -> None:
    """Load ``model_uri`` (path, ``s3://`` or ``models:/<name>@<alias>``), then serve until SIGTERM/SIGINT.

    The server starts listening only once the model is loaded, so readiness probes fail until
    then. KServe binds HTTP on all interfaces; ``grpc_port=0`` turns gRPC off.
    """
    sys.argv = sys.argv[:1]  # kserve parses sys.argv when imported
    import kserve

    predictor = SherlockPredictor(name, model_uri, limits, max_batch_size, batch_wait_ms)
    predictor.load()
    print(f"model {name} loaded from {model_uri}; serving on port {http_port}", flush=True)
    kserve.ModelServer(http_port=http_port, grpc_port=grpc_port or 8081, enable_grpc=bool(grpc_port),
                       workers=1).start([predictor])
