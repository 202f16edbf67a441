"""``sherlock serve`` as KServe's clients call it: a real server subprocess on 127.0.0.1 with the tiny model."""

import asyncio
import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from PIL import Image
from served import QUESTION, png, png_bytes, start_server
from servers import free_port, wait_http


def predict_v1(url, instance, timeout=120):
    return httpx.post(f"{url}/v1/models/sherlock:predict", json={"instances": [instance]}, timeout=timeout)


def test_ready_and_v1_answers_with_rounds_in_order(server):
    assert httpx.get(f"{server.url}/v2/models/sherlock/ready").json()["ready"] is True
    response = predict_v1(server.url, {"image": png(), "question": QUESTION, "self_correction_rounds": 2,
                                       "max_new_tokens": 8})
    assert response.status_code == 200, response.text
    (answer,) = response.json()["predictions"]
    assert len(answer["rounds"]) == 3  # direct + 2 corrections, in order
    assert answer["reasoning"] == answer["rounds"][-1]["response"]
    assert answer["answer"] == answer["rounds"][-1]["answer"]
    assert answer["usage"]["completion_tokens"] > 0 and answer["usage"]["prompt_tokens"] > 0


def test_v1_json_without_a_content_type_and_data_uris(server):
    """``curl -d`` sends JSON as application/x-www-form-urlencoded; images may be data URIs."""
    body = json.dumps({"instances": [{"image": f"data:image/png;base64,{png()}", "question": QUESTION,
                                      "max_new_tokens": 4}]})
    for headers in ({}, {"content-type": "application/x-www-form-urlencoded"}):
        response = httpx.post(f"{server.url}/v1/models/sherlock:predict", content=body, headers=headers, timeout=120)
        assert response.status_code == 200, response.text


def test_kserve_sdk_clients_v1_v2_json_and_binary(server):
    """KServe's own REST client: v1, v2 with JSON tensors, v2 with binary tensors holding raw PNG bytes."""
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    async def calls():
        v1 = InferenceRESTClient(RESTConfig(protocol="v1", timeout=120))
        v2 = InferenceRESTClient(RESTConfig(protocol="v2", timeout=120))
        answers = await v1.infer(server.url, {"instances": [{"image": png(), "question": QUESTION,
                                                              "max_new_tokens": 4}]}, model_name="sherlock")
        results = [answers["predictions"][0]]
        for binary in (False, True):
            image, question = InferInput("image", [2], "BYTES"), InferInput("question", [2], "BYTES")
            images = [png_bytes(), png_bytes(color=(0, 0, 200))] if binary else [png(), png(color=(0, 0, 200))]
            image.set_data_from_numpy(np.array(images, dtype=np.object_), binary_data=binary)
            question.set_data_from_numpy(np.array([QUESTION.encode()] * 2, dtype=np.object_), binary_data=binary)
            response = await v2.infer(server.url, InferRequest("sherlock", [image, question],
                                                               parameters={"max_new_tokens": 4}),
                                      model_name="sherlock")
            (output,) = response.outputs
            assert output.name == "answer" and output.shape == [2]
            results += [json.loads(answer) for answer in output.data]
        await v1.close()
        await v2.close()
        return results

    results = asyncio.run(calls())
    assert len(results) == 5 and all("rounds" in answer for answer in results)
    metadata = httpx.get(f"{server.url}/v2/models/sherlock").json()  # what the model takes and returns
    assert [(i["name"], i["datatype"]) for i in metadata["inputs"]] == [("image", "BYTES"), ("question", "BYTES")]
    assert [o["name"] for o in metadata["outputs"]] == ["answer"]


def test_sampling_settings_and_seed(server):
    """temperature/top_p/seed per instance: the same seed gives the same sample in any batch."""
    instance = {"image": png(), "question": QUESTION, "max_new_tokens": 12, "temperature": 1.5, "seed": 7}
    first, second = (predict_v1(server.url, instance).json()["predictions"][0]["reasoning"] for _ in range(2))
    assert first == second
    greedy = predict_v1(server.url, {"image": png(), "question": QUESTION, "max_new_tokens": 12}).json()
    assert greedy["predictions"][0]["finish_reason"] in ("stop", "length")


def tiff() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="TIFF")
    return base64.b64encode(buffer.getvalue()).decode()


def truncated_png() -> str:
    """A PNG cut in half: its header reads, its pixels do not."""
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()[:len(buffer.getvalue()) // 2]).decode()


@pytest.mark.parametrize("instance, message", [
    ({"image": "%%%not-base64", "question": QUESTION}, "not valid base64"),
    ({"image": base64.b64encode(b"plain text").decode(), "question": QUESTION}, "not a readable"),
    ({"image": tiff(), "question": QUESTION}, "not a readable PNG, JPEG or WebP"),
    ({"image": png(size=(3000, 3000)), "question": QUESTION}, "pixels"),
    ({"image": truncated_png(), "question": QUESTION}, "truncated or corrupt"),
    ({"image": "s3://bucket/images/a.png", "question": QUESTION}, "fetches no URLs"),
    ({"image": "https://example.com/a.png", "question": QUESTION}, "fetches no URLs"),
    ({"image": "data:text/html;base64,PGI+", "question": QUESTION}, "data:image/png|jpeg|webp"),
    ({"image": png(), "question": ""}, "question must be a non-empty"),
    ({"image": png(), "question": "x" * 5000}, "over the 4000 limit"),
    ({"image": png(), "question": QUESTION, "self_correction_rounds": 9}, "self_correction_rounds"),
    ({"image": png(), "question": QUESTION, "max_new_tokens": 100000}, "max_new_tokens"),
    ({"image": png(), "question": QUESTION, "temperature": "hot"}, "temperature"),
    ({"image": png(), "question": QUESTION, "seed": 1.5}, "seed"),
    ({"question": QUESTION}, "image must be"),
    ("just a string", "each instance must be an object"),
])
def test_bad_input_is_a_400_with_a_message(server, instance, message):
    response = predict_v1(server.url, instance)
    assert response.status_code == 400 and message in response.json()["error"], response.text


def test_request_level_limits(server):
    """Too many instances, too many pixels in one request, a body over the limit (413, before it is read)."""
    many = httpx.post(f"{server.url}/v1/models/sherlock:predict",
                      json={"instances": [{"image": png(), "question": QUESTION}] * 65})
    assert many.status_code == 400 and "over the 64 limit" in many.json()["error"]
    big = png(size=(2048, 2048), color=(10, 200, 10))
    pixels = httpx.post(f"{server.url}/v1/models/sherlock:predict",
                        json={"instances": [{"image": big, "question": QUESTION}] * 5}, timeout=60)
    assert pixels.status_code == 400 and "pixels" in pixels.json()["error"]
    body = httpx.post(f"{server.url}/v1/models/sherlock:predict", content=b"{" * (33 * 2**20), timeout=60)
    assert body.status_code == 413 and "byte limit" in body.json()["error"]


def test_malformed_json_and_payloads_are_4xx(server):
    bad_json = httpx.post(f"{server.url}/v1/models/sherlock:predict", content=b"{not json",
                          headers={"content-type": "application/json"})
    assert 400 <= bad_json.status_code < 500
    assert httpx.post(f"{server.url}/v1/models/sherlock:predict", json={"rows": []}).status_code == 400
    v2_bad = {"inputs": [{"name": "image", "shape": [1], "datatype": "FP32", "data": [1.0]}]}
    assert httpx.post(f"{server.url}/v2/models/sherlock/infer", json=v2_bad).status_code == 400


def test_v2_binary_question_that_is_not_utf8_is_a_400(server):
    """A binary tensor (KServe's binary extension) whose question bytes are not UTF-8."""
    image, question = png_bytes(), b"\xff\xfe bad"
    header = {"inputs": [
        {"name": "image", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 4 + len(image)}},
        {"name": "question", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 4 + len(question)}}]}
    head = json.dumps(header).encode()
    body = head + len(image).to_bytes(4, "little") + image + len(question).to_bytes(4, "little") + question
    response = httpx.post(f"{server.url}/v2/models/sherlock/infer", content=body, timeout=60,
                          headers={"inference-header-content-length": str(len(head)),
                                   "content-type": "application/octet-stream"})
    assert response.status_code == 400 and "UTF-8" in response.text, response.text


def test_listens_on_loopback_by_default_and_a_taken_port_fails_before_loading(server, tiny_model_dir, tmp_path):
    assert f"serving on http://127.0.0.1:{server.port}" in server.log.read_text()
    with socket.create_connection(("127.0.0.1", server.port)) as connection:
        assert connection.getpeername()[0] == "127.0.0.1"
    taken = subprocess.run([sys.executable, "-m", "sherlock.cli", "serve", "--model", str(tiny_model_dir),
                            "--http-port", str(server.port)], capture_output=True, text=True, timeout=120)
    assert taken.returncode == 1 and "Address already in use" in taken.stderr
    assert "loaded" not in taken.stdout  # refused before the model loads


def test_the_deployed_command_line_serves_answers_its_probes_and_stops_on_sigterm(tiny_model_dir, tmp_path):
    """The InferenceService's container command, run here: both probe paths answer, then SIGTERM stops it."""
    from types import SimpleNamespace

    from sherlock.serving.deploy import MODEL_DIR, PORT, DeployConfig, inference_service, to_manifest

    config = DeployConfig(model="models:/sherlock@champion", output=str(tmp_path), name="vlm")
    (container,) = to_manifest(inference_service(config, "s3://b/k", SimpleNamespace(name="m", version="1")))[
        "spec"]["predictor"]["containers"]
    assert container["args"][container["args"].index("--host") + 1] == "0.0.0.0"  # a pod serves its own IP
    (predictor,) = [to_manifest(inference_service(config, "s3://b/k", SimpleNamespace(name="m", version="1")))[
        "spec"]["predictor"]]
    assert predictor["terminationGracePeriodSeconds"] > config.request_timeout_s  # SIGKILL after the drain
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
        # a request in flight (its body still arriving) when SIGTERM comes: a new connection is refused at
        # once, the request in flight is answered, then the server exits
        body = json.dumps({"instances": [{"image": png(), "question": QUESTION, "max_new_tokens": 4}]}).encode()
        inflight = socket.create_connection(("127.0.0.1", port))
        inflight.sendall(b"POST /v1/models/vlm:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body) + body[:10])
        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until the server has taken the signal
            try:
                httpx.get(f"{url}/v2/health/live", timeout=2)
            except httpx.ConnectError:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("new connections still accepted 10 s after SIGTERM")
        inflight.sendall(body[10:])
        assert inflight.makefile("rb").readline().startswith(b"HTTP/1.1 200"), "the request in flight was dropped"
        inflight.close()
        assert process.wait(30) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/v2/models/vlm/ready")
    finally:
        if process.poll() is None:
            process.kill()


def test_raw_bytes_data_plane_against_kserves_own():
    """KServe's own decoding fails (500) on a binary BYTES tensor of raw PNG bytes; ours keeps the bytes,
    and on UTF-8 text it reads what KServe reads."""
    from kserve import InferInput, InferRequest
    from kserve.errors import InferenceError
    from kserve.model_repository import ModelRepository
    from kserve.protocol.dataplane import DataPlane

    from sherlock.serving.predictor import RawBytesDataPlane

    def binary(values):
        tensor = InferInput("image", [len(values)], "BYTES")
        tensor.set_data_from_numpy(np.array(values, dtype=np.object_), binary_data=True)
        body, json_length = InferRequest("m", [tensor]).to_rest()
        return body, {"inference-header-content-length": str(json_length)}

    kserves, ours = DataPlane(ModelRepository()), RawBytesDataPlane(ModelRepository())
    body, headers = binary([png_bytes(), b"\xff\xfe"])
    with pytest.raises(InferenceError, match="UTF-8"):
        kserves.decode_inference_request(body, headers, "m")
    assert ours.decode_inference_request(body, headers, "m").inputs[0].data == [png_bytes(), b"\xff\xfe"]
    body, headers = binary([b"two words", "naïve".encode()])
    theirs = kserves.decode_inference_request(body, headers, "m").inputs[0].data
    assert [value.decode() for value in ours.decode_inference_request(body, headers, "m").inputs[0].data] == theirs
    from kserve.errors import InvalidInput
    for bad in (body[:-3], b"!" + body[1:]):  # a tensor cut short, a header that is not JSON
        with pytest.raises(InvalidInput):
            ours.decode_inference_request(bad, headers, "m")


def test_no_repository_or_api_docs_routes_and_an_unload_attempt_changes_nothing(server):
    """KServe registers model load/unload and FastAPI its API docs on every server; one anonymous unload
    left the predictor answering 404 while liveness stayed 200. None of these routes is served here."""
    for path in ("/v2/repository/models/sherlock/unload", "/v2/repository/models/sherlock/load",
                 "/v2/repository/index"):
        assert httpx.post(server.url + path).status_code == 404, path
    for path in ("/openapi.json", "/docs", "/redoc"):
        assert httpx.get(server.url + path).status_code == 404, path
    assert httpx.get(f"{server.url}/v1/models/sherlock").status_code == 200
    assert httpx.get(f"{server.url}/").json() == {"status": "alive"}
    assert predict_v1(server.url, {"image": png(), "question": QUESTION, "max_new_tokens": 4}).status_code == 200


def test_liveness_follows_the_model():
    """Liveness answers 503 once the predictor is no longer ready (its batcher ended), so the kubelet
    restarts the pod; KServe's own liveness, the same app without :class:`ClosedRoutes`, answers 200."""
    from kserve.model_repository import ModelRepository
    from kserve.model_server import app
    from kserve.protocol.dataplane import DataPlane
    from kserve.protocol.model_repository_extension import ModelRepositoryExtension
    from kserve.protocol.rest.server import RESTServer

    from sherlock.serving.server import ClosedRoutes

    repository = ModelRepository()
    RESTServer("kserve.model_server:app", DataPlane(repository), ModelRepositoryExtension(repository),
               0).create_application()
    ready = {"value": True}
    guarded = ClosedRoutes(app, ready=lambda: ready["value"])

    async def get(asgi, path):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi), base_url="http://t") as client:
            return await client.get(path)

    assert asyncio.run(get(guarded, "/")).status_code == 200
    assert asyncio.run(get(guarded, "/openapi.json")).status_code == 404
    assert asyncio.run(get(app, "/openapi.json")).status_code == 200  # what ClosedRoutes closes
    ready["value"] = False
    assert asyncio.run(get(guarded, "/")).status_code == 503
    assert asyncio.run(get(app, "/")).json() == {"status": "alive"}  # KServe's: alive whatever the model does


def test_a_bearer_token_guards_every_route_but_the_probes(tiny_model_dir, tmp_path):
    """With --token-file, a request without the token (or with another) is a 401 before its body is read;
    the kubelet's probes need none; KServe's and OpenAI's clients send it as a bearer token."""
    from openai import APIStatusError, OpenAI
    from served import start_server

    token = "s3cr3t-" + "x" * 24
    (tmp_path / "token").write_text(token + "\n")
    served = start_server(tiny_model_dir, tmp_path / "server.log", "--token-file", str(tmp_path / "token"))
    try:
        url, body = served.url, {"instances": [{"image": png(), "question": QUESTION, "max_new_tokens": 4}]}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token}):
            refused = httpx.post(f"{url}/v1/models/sherlock:predict", json=body, headers=headers)
            assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer", headers
        assert httpx.get(f"{url}/metrics").status_code == 401
        assert httpx.get(f"{url}/v1/models").status_code == 401
        for probe in ("/", "/v2/health/live", "/v2/health/ready", "/v1/models/sherlock", "/v2/models/sherlock/ready"):
            assert httpx.get(url + probe).status_code == 200, probe
        allowed = {"Authorization": f"Bearer {token}"}
        assert httpx.post(f"{url}/v1/models/sherlock:predict", json=body, headers=allowed).status_code == 200
        assert httpx.get(f"{url}/metrics", headers=allowed).status_code == 200
        image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + png()}}
        messages = [{"role": "user", "content": [{"type": "text", "text": QUESTION}, image]}]
        with pytest.raises(APIStatusError) as refused:
            OpenAI(base_url=f"{url}/openai/v1", api_key="wrong").chat.completions.create(
                model="sherlock", messages=messages, max_tokens=4)
        assert refused.value.status_code == 401 and "bearer token" in refused.value.message
        answer = OpenAI(base_url=f"{url}/openai/v1", api_key=token).chat.completions.create(
            model="sherlock", messages=messages, max_tokens=4)
        assert answer.choices[0].message.content is not None
    finally:
        served.stop()
    (tmp_path / "short").write_text("abc")
    refused = subprocess.run([sys.executable, "-m", "sherlock.cli", "serve", "--model", str(tiny_model_dir),
                              "--token-file", str(tmp_path / "short")], capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "16 or more" in refused.stderr


def test_a_checkpoint_that_continues_is_served_continuing(tiny_model_dir, tmp_path):
    """An Octopus checkpoint (``self_correction.json``: continue) is served as it was trained: round 0 answers
    the question with the trigger instruction, each round continues the response after SEP, and the reasoning
    is the whole response — the greedy attempts of :func:`sherlock.generation.answer_continuing` itself."""
    import shutil

    import torch

    from sherlock.decoding import DecodingConfig
    from sherlock.generation import answer_continuing, trigger_prompts
    from sherlock.models.loading import load_vlm
    from sherlock.protocol import Protocol, write_protocol
    from sherlock.reasoning import SEP

    checkpoint = tmp_path / "octopus"
    shutil.copytree(tiny_model_dir, checkpoint)
    write_protocol(checkpoint, Protocol("continue"))
    served = start_server(checkpoint, tmp_path / "server.log")
    try:
        response = predict_v1(served.url, {"image": png(), "question": QUESTION, "self_correction_rounds": 2,
                                           "max_new_tokens": 8})
    finally:
        served.stop()
    assert response.status_code == 200, response.text
    (answer,) = response.json()["predictions"]
    model, processor = load_vlm(tiny_model_dir, dtype=torch.float32)
    expected = answer_continuing(model, processor, trigger_prompts([QUESTION], "stages"),
                                 [Image.open(io.BytesIO(png_bytes())).convert("RGB")], 2,
                                 DecodingConfig(8, 0.0, 1.0, 1))
    assert [r["response"] for r in answer["rounds"]] == [attempts[0] for attempts in expected]
    assert answer["reasoning"] == SEP.join(r["response"] for r in answer["rounds"])
    assert answer["usage"]["prompt_tokens"] > 0
