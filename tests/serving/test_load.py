"""Load and abuse on a real ``sherlock serve`` (127.0.0.1, default limits): bounded in count and time.

One burst on 16 client threads mixes normal requests, maximal ones (4 images of 2048² pixels, the
per-request pixel limit), clients that disconnect while their request waits, and malformed input of
every class. Meanwhile readiness and liveness are polled and the server's RSS is sampled. Asserted:
no 5xx, every probe answers within the ``timeoutSeconds`` of the InferenceService ``sherlock deploy`` writes
(a slower answer is a failed probe to the kubelet), RSS growth bounded, every abandoned request cancelled and none of
its queries generated to its end (the server's Prometheus counters), and the server answers
normally afterwards. The figures printed go to
docs/serving.md.
"""

import base64
import io
import json
import random
import re
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
from PIL import Image
from served import QUESTION, png

from sherlock.serving.deploy import DeployConfig, inference_service, to_manifest

GiB = 2**30


def big_jpeg(seed: int) -> str:
    """A 2048x2048 JPEG (the per-image pixel limit) that takes real work to decode."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, 2048, dtype=np.float32)
    pixels = (ramp[None, :, None] + rng.normal(0, 12, (2048, 2048, 3))).clip(0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return base64.b64encode(buffer.getvalue()).decode()


def rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024


def counter(url: str, name: str, label: str = "") -> float:
    text = httpx.get(f"{url}/metrics").text
    match = re.search(rf"^{name}{re.escape(label)} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_burst_of_normal_maximal_abandoned_and_malformed_requests(server):
    url, pid = server.url, server.process.pid
    predict = f"{url}/v1/models/sherlock:predict"
    small = {"image": png(), "question": QUESTION, "max_new_tokens": 4}
    big = [big_jpeg(seed) for seed in range(4)]
    maximal = {"instances": [{"image": image, "question": QUESTION, "max_new_tokens": 4} for image in big]}
    slow = {"instances": [{"image": png(), "question": QUESTION, "max_new_tokens": 256, "self_correction_rounds": 3}]}
    assert httpx.post(predict, json={"instances": [small]}, timeout=120).status_code == 200  # warm
    def answered() -> float:
        return counter(url, "sherlock_queries_total", '{outcome="answered"}')

    cancelled = "sherlock_requests_cancelled_total"
    baseline, answered_before, cancelled_before = rss(pid), answered(), counter(url, cancelled)

    def post(body, timeout=300.0, **options):
        return httpx.post(predict, json=body, timeout=timeout, **options).status_code

    def abandoned():
        try:
            httpx.post(predict, json=slow, timeout=0.5)
            return "answered"
        except httpx.TimeoutException:
            return "abandoned"

    malformed = [
        lambda: post({"instances": [small | {"image": "%%%"}]}),
        lambda: post({"instances": [small | {"image": "s3://bucket/secret.png"}]}),
        lambda: post({"instances": [small | {"image": "data:image/svg+xml;base64,PHN2Zz4="}]}),
        lambda: post({"instances": [small | {"question": "x" * 10**5}]}),
        lambda: post({"instances": [small | {"self_correction_rounds": -1}]}),
        lambda: post({"instances": [small] * 1000}),
        lambda: post({"instances": "nope"}),
        lambda: httpx.post(predict, content=b"\x00\xff" * 1000, timeout=60).status_code,
        lambda: httpx.post(predict, content=b"[" * (40 * 2**20), timeout=60).status_code,
        lambda: httpx.post(f"{url}/v2/models/sherlock/infer", json={"inputs": [{"name": "image", "shape": [1],
                           "datatype": "INT8", "data": [1]}]}, timeout=60).status_code,
        lambda: httpx.post(f"{url}/openai/v1/chat/completions", json={"model": "sherlock", "messages": []},
                           timeout=60).status_code,
        lambda: httpx.post(f"{url}/openai/v1/chat/completions", content=b"{", timeout=60).status_code,
    ]
    work = ([("normal", lambda: post({"instances": [small]}))] * 40 + [("maximal", lambda: post(maximal))] * 8
            + [("abandoned", abandoned)] * 6 + [("malformed", call) for call in malformed])
    random.Random(0).shuffle(work)

    (container,) = to_manifest(inference_service(DeployConfig(model="models:/sherlock@champion", output="out"),
                                                 "s3://b/k", SimpleNamespace(name="sherlock", version="1")))[
                                                     "spec"]["predictor"]["containers"]
    timeouts = {container[p]["httpGet"]["path"]: container[p]["timeoutSeconds"] for p in ("readinessProbe",
                                                                                        "livenessProbe")}
    timeouts["/v2/health/ready"] = container["readinessProbe"]["timeoutSeconds"]  # the ServingRuntime's readiness
    probes, memory, done = [], [], threading.Event()

    def watch():
        while not done.is_set():
            for path in timeouts:
                start = time.perf_counter()
                status = httpx.get(url + path, timeout=10).status_code
                probes.append((path, status, time.perf_counter() - start))
            memory.append(rss(pid))
            time.sleep(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    start = time.perf_counter()

    def timed(item):
        kind, call = item
        began = time.perf_counter()
        return kind, call(), time.perf_counter() - began

    try:
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(timed, work))
    finally:
        done.set()
        watcher.join()
    seconds = time.perf_counter() - start

    statuses = {kind: sorted(status for k, status, _ in results if k == kind) for kind, _ in work}
    assert all(status in (200, 429) for status in statuses["normal"] + statuses["maximal"]), statuses
    assert 200 in statuses["normal"] and 200 in statuses["maximal"]
    assert all(400 <= status < 500 and status != 429 for status in statuses["malformed"]), statuses["malformed"]
    assert statuses["abandoned"].count("abandoned") == 6
    worst = {path: max(latency for p, _, latency in probes if p == path) for path in timeouts}
    assert all(status == 200 for _, status, _ in probes), probes
    assert all(worst[path] < timeouts[path] for path in timeouts), (worst, timeouts)
    growth = max(memory) - baseline
    assert growth < 1.5 * GiB, f"RSS grew by {growth / GiB:.2f} GiB"

    deadline = time.time() + 300  # abandoned queries still queued are dropped, not run
    while counter(url, "sherlock_pending_instances") > 0 and time.time() < deadline:
        time.sleep(0.5)
    # the abandoned requests were cancelled, and none of their queries generated to its end
    assert counter(url, cancelled) - cancelled_before == 6
    assert answered() - answered_before == statuses["normal"].count(200) + 4 * statuses["maximal"].count(200)
    after = httpx.post(predict, json={"instances": [small]}, timeout=120)
    assert after.status_code == 200 and json.loads(after.text)["predictions"][0]["rounds"]

    outcomes = re.findall(r'^sherlock_queries_total\{outcome="(\w+)"\} (\S+)', httpx.get(f"{url}/metrics").text,
                          re.MULTILINE)
    normal = sorted(t for k, status, t in results if k == "normal" and status == 200)
    slowest = ", ".join(f"{path} {latency * 1000:.0f} ms" for path, latency in worst.items())
    print(f"\nburst of {len(work)} requests on 16 threads in {seconds:.1f} s: "
          f"normal p50 {statistics.median(normal):.2f} s, max {normal[-1]:.2f} s; statuses {statuses}; "
          f"probes {len(probes)}, slowest {slowest}; RSS {baseline / GiB:.2f} GiB "
          f"+ {growth / GiB:.2f} GiB at most; queries dropped / cut short in all: {outcomes}")
