"""The OpenAI-compatible routes called by the official ``openai`` client, and the docs' curl lines run verbatim."""

import json
import re
import subprocess
from pathlib import Path

import httpx
import openai
import pytest
from served import QUESTION, png, png_bytes, start_server

ROOT = Path(__file__).resolve().parents[2]


def message(image_url: str, text: str = QUESTION) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": text},
                                         {"type": "image_url", "image_url": {"url": image_url}}]}]


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=f"{server.url}/openai/v1", api_key="unused", max_retries=0, timeout=120) as client:
        yield client


def test_chat_completion_with_self_correction_rounds(client):
    response = client.chat.completions.create(model="sherlock", messages=message(f"data:image/png;base64,{png()}"),
                                              max_tokens=8, extra_body={"self_correction_rounds": 2})
    (choice,) = response.choices
    rounds = response.model_extra["self_correction"]["rounds"]
    assert response.object == "chat.completion" and response.model == "sherlock" and len(rounds) == 3
    assert choice.message.role == "assistant" and choice.message.content == rounds[-1]["response"]
    assert choice.finish_reason in ("stop", "length")
    usage = response.usage
    assert usage.completion_tokens > 0 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert [model.id for model in client.models.list()] == ["sherlock"]


def test_streaming_gives_the_same_response_and_usage(client):
    settings = dict(model="sherlock", messages=message(f"data:image/png;base64,{png()}"), max_tokens=10)
    whole = client.chat.completions.create(**settings)
    chunks = list(client.chat.completions.create(**settings, stream=True, stream_options={"include_usage": True}))
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == whole.choices[0].message.content  # greedy: the same answer
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.total_tokens == whole.usage.total_tokens


def test_seeded_sampling_repeats(client):
    settings = dict(model="sherlock", messages=message(f"data:image/png;base64,{png()}"), max_tokens=12,
                    temperature=1.5, top_p=0.9, seed=11)
    first, second = (client.chat.completions.create(**settings).choices[0].message.content for _ in range(2))
    assert first == second


@pytest.mark.parametrize("settings, error, text", [
    (dict(messages=message("https://example.com/cat.png")), openai.BadRequestError, "fetches no URLs"),
    (dict(messages=[{"role": "user", "content": QUESTION}]), openai.BadRequestError, "exactly one image_url"),
    (dict(messages=[{"role": "system", "content": "Be brief."}] + message(f"data:image/png;base64,{png()}")),
     openai.BadRequestError, "one user message"),
    (dict(messages=message(f"data:image/png;base64,{png()}"), n=2), openai.BadRequestError, "n = 1"),
    (dict(messages=message(f"data:image/png;base64,{png()}"), stop=["x"]), openai.BadRequestError, "'stop'"),
    (dict(messages=message(f"data:image/png;base64,{png()}"), max_tokens=10**6), openai.BadRequestError,
     "max_new_tokens"),
    (dict(messages=message("data:image/png;base64,@@@")), openai.BadRequestError, "base64"),
    (dict(messages=message(f"data:image/png;base64,{png()}"), model="gpt-4o"), openai.NotFoundError, "does not exist"),
])
def test_errors_are_openai_shaped(client, settings, error, text):
    with pytest.raises(error) as caught:
        client.chat.completions.create(**{"model": "sherlock", "max_tokens": 4} | settings)
    assert text in caught.value.message and caught.value.body["type"] == "invalid_request_error"


def test_the_docs_curl_lines_run_as_pasted(server, tmp_path):
    """docs/serving.md's first example as pasted into bash, shapes.png beside it: only its address is changed
    to this server's, and its first line (``sherlock serve``, which this test's server stands for) dropped."""
    block = re.search(r"```bash\n(.*?)```", (ROOT / "docs/serving.md").read_text(), re.DOTALL).group(1)
    serve, script = block.split("\n", 1)
    assert serve.startswith(".venv/bin/sherlock serve") and script.count("curl ") == 3  # v1, v2, OpenAI chat
    (tmp_path / "shapes.png").write_bytes(png_bytes())
    result = subprocess.run(["bash", "-e", "-c", script.replace("localhost:8080", f"127.0.0.1:{server.port}")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    decoder, position, bodies = json.JSONDecoder(), 0, []
    while position < len(result.stdout):
        body, position = decoder.raw_decode(result.stdout, position)
        bodies.append(body)
    assert [next(iter(body)) for body in bodies] == ["predictions", "model_name", "id"], bodies


def test_the_route_prefix_follows_kserve_openai_route_prefix(tiny_model_dir, tmp_path, monkeypatch):
    """KSERVE_OPENAI_ROUTE_PREFIX='' serves /v1/chat/completions, as KServe's own OpenAI routes do."""
    monkeypatch.setenv("KSERVE_OPENAI_ROUTE_PREFIX", "")
    served = start_server(tiny_model_dir, tmp_path / "server.log")
    try:
        body = {"model": "sherlock", "messages": message(f"data:image/png;base64,{png()}"), "max_tokens": 4}
        assert httpx.post(f"{served.url}/v1/chat/completions", json=body, timeout=120).status_code == 200
        assert httpx.post(f"{served.url}/openai/v1/chat/completions", json=body).status_code == 404
    finally:
        assert served.stop() == 0
