"""A real KServe ModelServer subprocess serving the tiny model on 127.0.0.1."""

import base64
import io
import os
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image
from servers import free_port, wait_http

QUESTION = "How many red shapes are there?"


def png(size=(72, 72), color=(200, 30, 30)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    port, log = free_port(), tmp_path_factory.mktemp("serve") / "server.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "sherlock.cli", "serve", "--model", str(tiny_model_dir), "--http-port", str(port),
         "--max-batch-size", "8", "--batch-wait-ms", "20"],
        stdout=log.open("w"), stderr=subprocess.STDOUT, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/v2/models/sherlock/ready", process, timeout=120, log=log)
    yield url, process
    if process.poll() is None:
        process.terminate()
        process.wait(30)


def predict_v1(url, instance, timeout=120):
    return httpx.post(f"{url}/v1/models/sherlock:predict", json={"instances": [instance]}, timeout=timeout)


def test_ready_and_v1_answers_with_rounds_in_order(server):
    url, _ = server
    assert httpx.get(f"{url}/v2/models/sherlock/ready").json()["ready"] is True
    response = predict_v1(url, {"image": png(), "question": QUESTION, "self_correction_rounds": 2,
                                "max_new_tokens": 8})
    assert response.status_code == 200, response.text
    (answer,) = response.json()["predictions"]
    assert len(answer["rounds"]) == 3  # direct + 2 corrections, in order
    assert answer["reasoning"] == answer["rounds"][-1]["response"]
    assert answer["answer"] == answer["rounds"][-1]["answer"]


def test_v2_infer(server):
    url, _ = server
    body = {"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "data": [png(), png(color=(0, 0, 200))]},
                       {"name": "question", "shape": [2], "datatype": "BYTES", "data": [QUESTION, QUESTION]}],
            "parameters": {"self_correction_rounds": 1, "max_new_tokens": 6}}
    response = httpx.post(f"{url}/v2/models/sherlock/infer", json=body, timeout=120)
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    assert output["name"] == "answer" and output["shape"] == [2] and len(output["data"]) == 2


@pytest.mark.parametrize("instance, message", [
    ({"image": "%%%not-base64", "question": QUESTION}, "not valid base64"),
    ({"image": base64.b64encode(b"plain text").decode(), "question": QUESTION}, "not a readable"),
    ({"image": png(size=(3000, 3000)), "question": QUESTION}, "pixels"),
    ({"image": png(), "question": ""}, "question must be a non-empty"),
    ({"image": png(), "question": "x" * 5000}, "over the 4000 limit"),
    ({"image": png(), "question": QUESTION, "self_correction_rounds": 9}, "self_correction_rounds"),
    ({"image": png(), "question": QUESTION, "max_new_tokens": 100000}, "max_new_tokens"),
    ({"question": QUESTION}, "image must be"),
    ("just a string", "each instance must be an object"),
])
def test_bad_input_is_a_400_with_a_message(server, instance, message):
    url, _ = server
    response = predict_v1(url, instance)
    assert response.status_code == 400 and message in response.json()["error"], response.text


def test_malformed_json_and_payloads_are_4xx(server):
    url, _ = server
    bad_json = httpx.post(f"{url}/v1/models/sherlock:predict", content=b"{not json",
                          headers={"content-type": "application/json"})
    assert 400 <= bad_json.status_code < 500
    assert httpx.post(f"{url}/v1/models/sherlock:predict", json={"rows": []}).status_code == 400
    v2_bad = {"inputs": [{"name": "image", "shape": [1], "datatype": "FP32", "data": [1.0]}]}
    assert httpx.post(f"{url}/v2/models/sherlock/infer", json=v2_bad).status_code == 400


def test_bounded_concurrent_load_has_no_errors(server):
    url, _ = server
    instance = {"image": png(), "question": QUESTION, "max_new_tokens": 4}

    def call(_):
        start = time.perf_counter()
        response = predict_v1(url, instance)
        return response.status_code, time.perf_counter() - start

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, range(200)))
    latencies = sorted(seconds for _, seconds in results)
    p50, p99 = statistics.median(latencies), latencies[int(0.99 * len(latencies)) - 1]
    print(f"200 requests, 8 concurrent: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms")
    assert [status for status, _ in results] == [200] * 200


def test_sigterm_shuts_down_gracefully(server):
    url, process = server
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/v2/models/sherlock/ready")


def test_the_deployed_command_line_serves_and_answers_its_probes(tiny_model_dir, tmp_path):
    """The InferenceService's container command, run here: its readiness and liveness paths answer 200."""
    from types import SimpleNamespace

    from sherlock.serving.deploy import MODEL_DIR, PORT, DeployConfig, inference_service, to_manifest

    config = DeployConfig(model="models:/sherlock@champion", output=str(tmp_path), name="vlm")
    (container,) = to_manifest(inference_service(config, "s3://b/k", SimpleNamespace(name="m", version="1")))[
        "spec"]["predictor"]["containers"]
    port, log = free_port(), tmp_path / "server.log"
    argv = [str(tiny_model_dir) if arg == MODEL_DIR else str(port) if arg == str(PORT) else arg
            for arg in container["command"] + container["args"]]
    process = subprocess.Popen([sys.executable, "-m", "sherlock.cli", *argv[1:]], stdout=log.open("w"),
                               stderr=subprocess.STDOUT, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/", process, timeout=120, log=log)
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["port"] == PORT
            assert httpx.get(url + container[probe]["httpGet"]["path"]).status_code == 200, probe
        assert httpx.get(f"{url}/v1/models/not-{config.name}").status_code == 404
    finally:
        process.terminate()
        process.wait(30)
