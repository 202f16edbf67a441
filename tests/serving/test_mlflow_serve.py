"""The registered model served by ``mlflow models serve`` with MLflow's default environment manager.

MLflow builds a fresh virtualenv from the model's own files (``requirements.txt``, the ``sherlock``
package logged as code, the models-from-code file) and serves it: nothing of this checkout is on
its path. Slow by nature (the environment installs torch and transformers from the package index):
the one such test.
"""

import base64
import os
import subprocess
import sys
from pathlib import Path

import httpx
import mlflow
from served import QUESTION, png
from servers import free_port, wait_http

from sherlock import tracking


def test_mlflow_models_serve_builds_a_fresh_environment_and_answers(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.create_experiment("serve", artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.set_experiment("serve")
    with mlflow.start_run() as run:
        tracking.write_run_file(run, tiny_model_dir)
    version = tracking.register_checkpoint(tiny_model_dir, "served", {"acc": 1.0}, {})
    mlflow.MlflowClient().set_registered_model_alias("served", "champion", version.version)
    model_dir = Path(mlflow.artifacts.download_artifacts("models:/served@champion"))
    assert (model_dir / "code" / "sherlock" / "generation.py").is_file() and not list(model_dir.glob("**/*.pkl"))
    assert "sherlock-vlm" not in (model_dir / "requirements.txt").read_text()  # no pin that no index has

    port, log = free_port(), tmp_path / "serve.log"
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/served@champion", "-p", str(port),
         "-h", "127.0.0.1"], cwd=tmp_path, stdout=log.open("w"), stderr=subprocess.STDOUT,
        env=environment | {"MLFLOW_ENV_ROOT": str(tmp_path / "envs"), "HF_HUB_OFFLINE": "1"})
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/ping", process, timeout=1200, log=log)
        (environment_dir,) = (tmp_path / "envs").iterdir()  # the fresh environment MLflow built
        assert "virtualenv" in log.read_text() and environment_dir.is_dir()
        image = base64.b64decode(png())
        body = {"dataframe_split": {"columns": ["question", "image"],
                                    "data": [[QUESTION, base64.b64encode(image).decode()]]},
                "params": {"self_correction_rounds": 1, "max_new_tokens": 6}}
        response = httpx.post(f"{url}/invocations", json=body, timeout=120)
        assert response.status_code == 200, response.text
        (prediction,) = response.json()["predictions"]
        assert len(prediction["responses"]) == 2
        bad = body | {"dataframe_split": {"columns": ["question", "image"], "data": [[QUESTION, "AAAA"]]}}
        assert httpx.post(f"{url}/invocations", json=bad, timeout=60).status_code == 400
    finally:
        process.terminate()
        process.wait(60)


def test_the_pyfunc_answers_as_the_checkpoint_was_trained(tiny_model_dir, tmp_path):
    """The pyfunc reads the checkpoint's ``self_correction.json``: an Octopus checkpoint's rounds continue its
    response (:func:`sherlock.generation.answer_continuing`), the same weights without the file ask R(Q, ·);
    in process (the environment build is the test above)."""
    import io
    import shutil
    from types import SimpleNamespace

    import pandas as pd
    import torch
    from PIL import Image
    from served import png_bytes

    from sherlock.decoding import DecodingConfig
    from sherlock.generation import answer_continuing, answer_with_corrections, trigger_prompts
    from sherlock.mlflow_model import SherlockModel
    from sherlock.models.loading import load_vlm
    from sherlock.protocol import Protocol, write_protocol

    checkpoint = tmp_path / "octopus"
    shutil.copytree(tiny_model_dir, checkpoint)
    write_protocol(checkpoint, Protocol("continue"))
    rows = pd.DataFrame({"question": [QUESTION], "image": [png()]})
    params = {"self_correction_rounds": 1, "max_new_tokens": 8}
    model, processor = load_vlm(tiny_model_dir, dtype=torch.float32)
    image, config = [Image.open(io.BytesIO(png_bytes())).convert("RGB")], DecodingConfig(max_new_tokens=8)
    for folder, expected in ((checkpoint, answer_continuing(model, processor, trigger_prompts([QUESTION], "stages"),
                                                            image, 1, config)),
                             (tiny_model_dir, answer_with_corrections(model, processor, [QUESTION], image, 1, config))):
        pyfunc = SherlockModel()
        pyfunc.load_context(SimpleNamespace(artifacts={"checkpoint": str(folder)}))
        (answer,) = pyfunc.predict(None, rows, params)
        assert answer["responses"] == [attempts[0] for attempts in expected], folder
