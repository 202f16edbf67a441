"""``sherlock serve`` on every model family beside Mllama (whose checkpoint the other serving tests use):
KServe's v1 and v2 protocols and OpenAI's client, each with a correction round, from a real server subprocess."""

import json

import httpx
import openai
import pytest
from served import QUESTION, png, start_server

from sherlock.models.families import FAMILIES


@pytest.mark.parametrize("name", sorted(set(FAMILIES) - {"mllama"}))
def test_the_family_is_served_to_kserve_and_openai_clients(name, family_model_dirs, tmp_path):
    server = start_server(family_model_dirs[name], tmp_path / "serve.log")
    try:
        response = httpx.post(f"{server.url}/v1/models/sherlock:predict", timeout=120, json={"instances": [
            {"image": png(), "question": QUESTION, "self_correction_rounds": 1, "max_new_tokens": 6}]})
        assert response.status_code == 200, response.text
        (answer,) = response.json()["predictions"]
        assert len(answer["rounds"]) == 2 and answer["usage"]["prompt_tokens"] > 0
        v2 = httpx.post(f"{server.url}/v2/models/sherlock/infer", timeout=120, json={
            "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [png()]},
                       {"name": "question", "shape": [1], "datatype": "BYTES", "data": [QUESTION]}],
            "parameters": {"max_new_tokens": 6, "self_correction_rounds": 1}})
        assert v2.status_code == 200, v2.text
        (output,) = v2.json()["outputs"]
        assert output["name"] == "answer" and len(json.loads(output["data"][0])["rounds"]) == 2
        image = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png()}"}}
        with openai.OpenAI(base_url=f"{server.url}/openai/v1", api_key="unused", max_retries=0, timeout=120) as client:
            completion = client.chat.completions.create(
                model="sherlock", max_tokens=6, extra_body={"self_correction_rounds": 1},
                messages=[{"role": "user", "content": [{"type": "text", "text": QUESTION}, image]}])
        rounds = completion.model_extra["self_correction"]["rounds"]
        assert len(rounds) == 2 and completion.choices[0].message.content == rounds[-1]["response"]
    finally:
        server.stop()
