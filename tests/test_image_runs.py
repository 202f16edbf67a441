"""Inside the built project image (`make image`), as a cluster runs it: the image's user and the uid the
manifests use (10001), the pipeline steps' own executor commands from the compiled pipelines/sherlock.yaml
with a real KFP executor input, the predictor answering, the DeepSpeed op the offload configs need.

Containers are run with buildah (``buildah run --isolation chroot``: podman cannot start containers on
these machines); there is no Kubernetes here, so the pod is stood in for by a host directory mounted at
the same path. Skips when podman is missing, unless SHERLOCK_REQUIRE_IMAGE=1 (`.ci/run` sets it).
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from PIL import Image

from sherlock.machine import free_port

ROOT = Path(__file__).resolve().parents[1]
IMAGE = os.environ.get("SHERLOCK_TEST_IMAGE", "localhost/sherlock:0.1.0-cuda")
MANIFEST_UID = "10001"  # manifests/ and charts/ run the image as this uid


def _need(condition: bool, reason: str) -> None:
    if not condition:
        if os.environ.get("SHERLOCK_REQUIRE_IMAGE") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def container(tmp_path_factory):
    """A working container of the image and a host directory mounted in it at the same path."""
    _need(shutil.which("buildah") is not None, "buildah is not installed (apt-get install podman)")
    _need(subprocess.run(["podman", "image", "exists", IMAGE]).returncode == 0, f"{IMAGE} is not built (make image)")
    shared = tmp_path_factory.mktemp("pod")
    shared.chmod(0o777)
    name = f"sherlock-test-{os.getpid()}"
    subprocess.run(["buildah", "from", "--name", name, IMAGE], check=True, capture_output=True)
    yield name, shared
    subprocess.run(["buildah", "rm", name], capture_output=True)


def run_in(container, *command: str, user: str = MANIFEST_UID, background: bool = False, timeout: float = 600):
    name, shared = container
    argv = ["buildah", "run", "--isolation", "chroot", "--user", user, "-v", f"{shared}:{shared}", name, "--",
            *command]
    if background:
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(command)[:300]} exited {result.returncode}:\n{result.stdout[-3000:]}" \
                                   f"\n{result.stderr[-5000:]}"
    return result.stdout


def test_the_image_runs_as_its_user_and_the_manifests_uid_with_the_locked_packages(container):
    for user in ("1000", MANIFEST_UID):
        assert "sherlock" in run_in(container, "sherlock", "--help", user=user)
    locked = {}
    for line in (ROOT / "requirements/constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            locked[name.strip().lower().replace("_", "-")] = version.strip()
    installed = {}
    for line in run_in(container, "pip", "freeze", "--exclude-editable").splitlines():
        if "==" in line:
            name, version = line.split("==")
            installed[name.lower().replace("_", "-")] = version
    assert installed["torch"].startswith(locked["torch"])
    different = {name: (version, locked[name]) for name, version in installed.items()
                 if name in locked and name != "torch" and version != locked[name]}
    assert not different, f"installed in the image vs the lock: {different}"
    assert not set(installed) - set(locked) - {"sherlock-vlm"}, "packages in the image that the lock does not pin"


def test_deepspeed_cpu_adam_loads_and_steps_without_a_compiler(container):
    """ZeRO optimizer offload (configs/deepspeed/zero3_offload.json) needs the cpu_adam op; the image has
    no compiler, so the op must have been built into it."""
    out = run_in(container, "python", "-c", (
        "import shutil, torch; from deepspeed.ops.adam import DeepSpeedCPUAdam\n"
        "assert shutil.which('g++') is None and shutil.which('c++') is None\n"
        "p = torch.nn.Parameter(torch.ones(4)); opt = DeepSpeedCPUAdam([p], lr=0.1)\n"
        "p.grad = torch.ones(4); opt.step(); print('stepped', float(p[0]))"))
    assert float(out.split("stepped ")[1]) == pytest.approx(0.9)  # one Adam step of lr 0.1 from 1.0


def executor_command(component: str, arguments: dict, task_root: Path) -> list[str]:
    """The compiled step's command for ``arguments``, placeholders filled as the KFP launcher fills them
    (kfp.local's executor-input builder)."""
    from google.protobuf import json_format
    from kfp.local import executor_input_utils, placeholder_utils
    from kfp.pipeline_spec import pipeline_spec_pb2

    spec = next(yaml.safe_load_all((ROOT / "pipelines/sherlock.yaml").read_text()))
    component_spec = json_format.ParseDict(spec["components"][f"comp-{component}"], pipeline_spec_pb2.ComponentSpec())
    container = spec["deploymentSpec"]["executors"][component_spec.executor_label]["container"]
    executor_input = executor_input_utils.construct_executor_input(component_spec, arguments, str(task_root), False)
    return placeholder_utils.replace_placeholders(
        container["command"] + container["args"],
        executor_input_utils.executor_input_to_dict(executor_input, component_spec),
        "sherlock", component, str(task_root), "image-test")


def run_step(container, component: str, arguments: dict) -> dict:
    """Run one compiled step in the image; its output parameters."""
    _, shared = container
    task_root = shared / "tasks" / component
    task_root.mkdir(parents=True)
    task_root.chmod(0o777)
    run_in(container, *executor_command(component, arguments, task_root))
    output = json.loads((task_root / "executor_output.json").read_text())
    return {name: value for name, value in output.get("parameterValues", {}).items()}


@pytest.fixture(scope="module")
def trained(container):
    """The embedded default's first steps, each from its compiled command in the image (quick settings)."""
    from pipelines.run_local import embedded_arguments

    _, shared = container
    arguments = embedded_arguments(shared, quick=True)
    common = {"output_root": str(shared / "artifacts"), "pipeline_run_id": "image-test"}
    inputs = run_step(container, "prepare-inputs", common | {
        "base_model": "embedded", "train_data": "embedded", "benchmarks": "embedded", "seed": 0})
    subsets = run_step(container, "sample", common | {"data": inputs["train_data"], "seed": 0,
                                                           "sizes": arguments["subset_sizes"]})
    r0 = run_step(container, "sft", common | {"data": subsets["d_a"], "model": inputs["base_model"], "name": "r0",
                                              "rejected": "", "settings": arguments["sft_r0_settings"]})["Output"]
    evaluation = run_step(container, "evaluate", common | {
        "benchmarks": inputs["benchmarks"], "model": r0, "name": "eval_r0", "prior_data": subsets["d_a"],
        "settings": arguments["evaluate_settings"] | {"limit": 4, "max_new_tokens": 24}})["Output"]
    return r0, evaluation


def test_pipeline_steps_run_in_the_image_from_their_compiled_commands(trained):
    r0, evaluation = trained
    assert (Path(r0) / "model.safetensors").is_file() and (Path(r0) / "SHA256SUMS").is_file()
    metrics = json.loads((Path(evaluation) / "metrics.json").read_text())
    assert metrics["benchmarks"]["llava_cot"]["rounds"][0]["n"] == 4


def test_the_predictor_serves_from_the_image(container, trained):
    r0, _ = trained
    port = free_port()
    server = run_in(container, "sherlock", "serve", "--model", r0, "--name", "sherlock", "--http-port", str(port),
                    background=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models/sherlock", timeout=2) as ready:
                    if json.loads(ready.read()).get("ready"):
                        break
            except OSError:
                time.sleep(1)
        assert server.poll() is None, server.stdout.read()[-3000:]
        image = io.BytesIO()
        Image.new("RGB", (72, 72), "red").save(image, format="PNG")
        body = json.dumps({"instances": [{"question": "How many shapes are there?", "max_new_tokens": 8, "image":
                                          "data:image/png;base64," + base64.b64encode(image.getvalue()).decode()}]})
        body = body.encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models/sherlock:predict", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            (prediction,) = json.loads(response.read())["predictions"]
        assert len(prediction["rounds"]) == 1 and prediction["reasoning"] == prediction["rounds"][0]["response"]
    finally:
        server.terminate()
        server.wait(60)
