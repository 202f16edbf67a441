"""Serving: the KServe predictor (``sherlock serve``, HTTP v1) against calling generate directly.

Baseline: :func:`answer_with_corrections` in this process, one question at a time — what the
predictor runs per batch. Project: the same questions as v1 requests to a ModelServer subprocess
on 127.0.0.1, first one at a time (the serving overhead: HTTP, JSON, base64, batching window),
then from 8 concurrent clients (dynamic batching). The server and the direct calls take turns, so
they never share the CPU.
"""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from bench.common import Result, Workspace, median

OVERHEAD_TARGET = 1 / 1.15  # direct latency / served latency at batch 1: overhead ≤ 15 %
CONCURRENCY_TARGET = 3.0  # requests/s at 8 concurrent clients over requests/s one at a time
CONCURRENCY = 8


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 180.0) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"sherlock serve exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout}s")


def measure(workspace: Workspace, requests: int, max_new_tokens: int, device: torch.device) -> list[Result]:
    import httpx

    from sherlock.data.llava_cot import load_llava_cot
    from sherlock.data.schema import open_image
    from sherlock.decoding import DecodingConfig
    from sherlock.generation import answer_with_corrections
    from sherlock.machine import free_port
    from sherlock.models.loading import load_vlm

    data = load_llava_cot(workspace.data / "data.jsonl")
    records = data.records[:requests]
    images = [open_image(data.image_root, r) for r in records]

    def encoded(image) -> str:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode()

    payloads = [{"instances": [{"image": encoded(image), "question": r.question, "max_new_tokens": max_new_tokens}]}
                for r, image in zip(records, images)]
    model, processor = load_vlm(workspace.model, dtype=torch.float32, device=str(device))
    decoding = DecodingConfig(max_new_tokens=max_new_tokens, batch_size=1)

    def direct(index: int) -> None:
        answer_with_corrections(model, processor, [records[index].question], [images[index]], 0, decoding)

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "sherlock.cli", "serve", "--model", str(workspace.model),
                               "--http-port", str(port), "--max-batch-size", str(CONCURRENCY)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env=dict(os.environ, HF_HUB_OFFLINE="1"))
    url = f"http://127.0.0.1:{port}/v1/models/sherlock"
    try:
        wait_ready(url, server)
        client = httpx.Client(timeout=600)

        def served(index: int) -> None:
            response = client.post(f"{url}:predict", json=payloads[index])
            response.raise_for_status()

        served(0), direct(0)  # warm-up
        direct_seconds, served_seconds = [], []
        for index in range(requests):  # alternate: the two never run at the same time
            for function, times in ((direct, direct_seconds), (served, served_seconds)):
                start = time.perf_counter()
                function(index)
                times.append(time.perf_counter() - start)
        start = time.perf_counter()
        for index in range(requests):
            served(index)
        sequential = requests / (time.perf_counter() - start)
        start = time.perf_counter()
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            list(pool.map(served, range(requests)))
        concurrent = requests / (time.perf_counter() - start)
    finally:
        server.terminate()
        server.wait(30)
    latency = {"direct_p50_s": median(direct_seconds), "served_p50_s": median(served_seconds),
               "served_p99_s": sorted(served_seconds)[max(0, int(0.99 * len(served_seconds)) - 1)]}
    return [
        Result("Serving overhead batch 1", "requests/s", 1 / latency["served_p50_s"], 1 / latency["direct_p50_s"],
               latency["direct_p50_s"] / latency["served_p50_s"], OVERHEAD_TARGET,
               latency | {"requests": requests, "max_new_tokens": max_new_tokens}),
        Result(f"Serving {CONCURRENCY} concurrent", "requests/s", concurrent, sequential, concurrent / sequential,
               CONCURRENCY_TARGET, {"requests": requests, "max_new_tokens": max_new_tokens}),
    ]


def run(workspace: Workspace, quick: bool, device: torch.device) -> list[Result]:
    return measure(workspace, requests=8 if quick else 32, max_new_tokens=8 if quick else 32, device=device)
