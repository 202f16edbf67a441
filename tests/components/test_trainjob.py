"""Training steps as Kubeflow Trainer v2 TrainJobs, through the Kubeflow SDK (``kubeflow==0.5.0``).

- The local path is real: the SDK's ``LocalProcessBackend`` builds a virtual environment, pip-installs
  this checkout into it (as this machine's pip is configured) and runs the SFT stage on 2 torchrun ranks.
- The cluster path: there is no kube-apiserver on the test machines. The SDK's Kubernetes backend talks
  to the stand-in of ``tests/kube_api.py``, which serves the ClusterTrainingRuntime of
  ``manifests/trainer/`` and records the TrainJob the step creates; that TrainJob is checked against the
  Trainer v2 schema (the ``kubeflow-trainer-api`` models, strict). No controller runs it: the failure
  test sets the job's conditions as the Trainer controller would.
"""

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from components.sft import sft
from components.steps import stage_step
from components.trainjob import TrainJobSettings, follow_trainjob, submit_trainjob
from pipelines.common import ClusterOptions
from sherlock.config import ConfigError, load_config
from sherlock.serving.schema import ManifestError, validate_manifest
from tests.kube_api import KubeAPI

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "sherlock"
HOSTILE = "$(touch /tmp/pwned)`id`"


@pytest.fixture
def cluster():
    api = KubeAPI()
    runtime = yaml.safe_load((ROOT / "manifests" / "trainer" / "runtime.yaml").read_text())
    api.resources["clustertrainingruntimes"][("", runtime["metadata"]["name"])] = runtime
    yield api
    api.close()


def kubernetes_client(api: KubeAPI):
    from kubeflow.trainer import KubernetesBackendConfig, TrainerClient
    from kubernetes.client import Configuration

    configuration = Configuration()
    configuration.host = api.url
    return TrainerClient(backend_config=KubernetesBackendConfig(namespace=NAMESPACE,
                                                                client_configuration=configuration))


def settings_of(options: ClusterOptions, nodes: int, **changes) -> TrainJobSettings:
    return load_config(TrainJobSettings, overrides=options.trainjob(nodes) | {"namespace": NAMESPACE} | changes)


def submitted(cluster: KubeAPI, options: ClusterOptions, nodes: int = 2, gpus: int = 8):
    """Submit an SFT step with a hostile setting; returns ``(name, the TrainJob as the API received it)``."""
    client = kubernetes_client(cluster)
    config = {"model": "s3://sherlock/runs/r/models/base", "data": "s3://sherlock/runs/r/subsets/D_A",
              "output": "s3://sherlock/runs/r/sft-r0", "rejected": HOSTILE}
    name = submit_trainjob(client, settings_of(options, nodes), "sft", config, "run-1", gpus,
                           {"sherlock.dev/step": "sft-r0"})
    return name, cluster.resources["trainjobs"][(NAMESPACE, name)]


def test_the_trainjob_of_a_step_validates_and_carries_the_steps_placement(cluster):
    options = ClusterOptions(trainer="trainjob", num_nodes=2, checkpoint_pvc="checkpoints", gpu_memory="512Gi")
    name, job = submitted(cluster, options)
    validate_manifest(job)  # the Trainer v2 TrainJob schema, strict
    spec = job["spec"]
    assert spec["runtimeRef"] == {"name": "sherlock-torch", "kind": "ClusterTrainingRuntime"}
    trainer = spec["trainer"]
    assert trainer["numNodes"] == 2 and trainer["image"].endswith("-cuda")
    resources = trainer["resourcesPerNode"]
    assert resources["limits"] == resources["requests"]
    assert {key: str(value) for key, value in resources["limits"].items()} == {
        "nvidia.com/gpu": "8", "cpu": "8", "memory": "512Gi"}
    (patch,) = spec["runtimePatches"]
    (node,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = node["template"]["spec"]["template"]
    assert pod["metadata"]["labels"] == {"sherlock.dev/s3-client": "true", "sherlock.dev/mlflow-client": "true",
                                         "sherlock.dev/trainjob": "true"}
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["spec"]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["spec"]["serviceAccountName"] == "sherlock-trainjob"
    assert {v["name"] for v in pod["spec"]["volumes"]} == {"dshm", "cache", "checkpoints"}
    (container,) = pod["spec"]["containers"]
    assert container["name"] == "node"
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/dev/shm", "/cache", "/checkpoints"}
    env = {e["name"]: e.get("valueFrom", {}).get("secretKeyRef", {}).get("name") or e.get("value")
           for e in container["env"]}
    # the TrainJobs' own S3 identity (writes runs/, not registered checkpoints), never the steps'
    assert env["AWS_SECRET_ACCESS_KEY"] == env["AWS_ACCESS_KEY_ID"] == "sherlock-s3-trainjob"
    assert env["MLFLOW_TRACKING_URI"] == "sherlock-mlflow" and env["SHERLOCK_CACHE"] == "/cache"
    assert job["metadata"]["labels"] == {"sherlock.dev/step": "sft-r0"}

    # the step's function and its call travel in the runtime's shell script: the config base64-encoded,
    # so nothing in a run parameter reaches the shell
    script = trainer["command"][-1]
    assert "torchrun" in script and "def trainjob_rank(job)" in script and HOSTILE not in script
    (encoded,) = re.findall(r"trainjob_rank\(\*\*\{'job': '([A-Za-z0-9+/=]+)'\}\)", script)
    assert json.loads(base64.b64decode(encoded)) == {
        "name": "sft", "pipeline_run_id": "run-1",
        "config": {"model": "s3://sherlock/runs/r/models/base", "data": "s3://sherlock/runs/r/subsets/D_A",
                   "output": "s3://sherlock/runs/r/sft-r0", "rejected": HOSTILE}}

    job["spec"]["trainer"]["numNodes"] = "two"  # the check can fail
    with pytest.raises(ManifestError, match="numNodes"):
        validate_manifest(job)


def test_a_failed_trainjob_fails_the_step_with_its_conditions(cluster):
    options = ClusterOptions(trainer="trainjob")
    name, job = submitted(cluster, options, nodes=1, gpus=1)
    job["status"] = {"conditions": [{"type": "Failed", "status": "True", "reason": "JobSetFailed",
                                     "message": "jobset failed: rank 3 exited with code 1",
                                     "lastTransitionTime": "2026-12-02T00:00:00Z"}]}
    with pytest.raises(RuntimeError, match=f"TrainJob {name} failed: Failed=True JobSetFailed: jobset failed: rank 3"):
        follow_trainjob(kubernetes_client(cluster), settings_of(options, 1, poll_s=1, timeout_s=30), name)


def test_a_trainjob_that_does_not_end_in_time_is_deleted(cluster):
    options = ClusterOptions(trainer="trainjob")
    name, _ = submitted(cluster, options, nodes=1, gpus=1)
    with pytest.raises(TimeoutError):
        follow_trainjob(kubernetes_client(cluster), settings_of(options, 1, poll_s=1, timeout_s=2), name)
    assert (NAMESPACE, name) not in cluster.resources["trainjobs"]


def test_a_stopped_step_deletes_its_trainjob(cluster, tmp_path):
    """SIGTERM to the step (a cancelled pipeline run) while it follows its TrainJob: the job is deleted."""
    options = ClusterOptions(trainer="trainjob")
    name, _ = submitted(cluster, options, nodes=1, gpus=1)
    script = tmp_path / "follow.py"
    script.write_text(f"""
import sys
from kubeflow.trainer import KubernetesBackendConfig, TrainerClient
from kubernetes.client import Configuration
from components.trainjob import TrainJobSettings, follow_trainjob
configuration = Configuration()
configuration.host = {cluster.url!r}
client = TrainerClient(backend_config=KubernetesBackendConfig(namespace={NAMESPACE!r},
                                                              client_configuration=configuration))
print("following", flush=True)
follow_trainjob(client, TrainJobSettings(namespace={NAMESPACE!r}, poll_s=1, timeout_s=600), {name!r})
""")
    process = subprocess.Popen([sys.executable, str(script)], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    while (line := process.stdout.readline()) and line.strip() != "following":  # past the SDK's warnings
        pass
    assert line.strip() == "following"
    time.sleep(1)
    assert (NAMESPACE, name) in cluster.resources["trainjobs"]
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert process.returncode != 0 and f"TrainJob {name} deleted" in output and "Stopped: signal 15" in output
    assert (NAMESPACE, name) not in cluster.resources["trainjobs"]


def test_settings_that_cannot_run_are_refused():
    with pytest.raises(ConfigError, match="needs --trainer trainjob"):
        ClusterOptions(num_nodes=2)
    with pytest.raises(ConfigError, match="trainer must be in-pod or trainjob"):
        ClusterOptions(trainer="slurm")
    with pytest.raises(ConfigError, match="backend must be kubernetes or local"):
        load_config(TrainJobSettings, overrides={"backend": "docker"})
    with pytest.raises(ValueError, match="stage online runs on one node"):
        stage_step("online", "online-1", {}, "/tmp/runs", "run-1", 1, {"num_nodes": 2}, model="m", data="d")


def test_a_step_runs_as_a_trainjob_on_the_sdks_local_backend(tiny_model_dir, subset_dir, tmp_path, capfd):
    """The SFT component through ``LocalProcessBackend``: 2 torchrun ranks in the job's own environment,
    into which this checkout is pip-installed (a wheel of it) with the extra a stage needs (``tracking``:
    the stage runner's MLflow) — the one slow test of this path; the component returns the step's output."""
    environment = {key: value for key, value in os.environ.items() if key.startswith("PIP_")} | {
        "HOME": os.environ.get("HOME", str(tmp_path)), "PIP_CONSTRAINT": str(ROOT / "requirements" / "constraints.txt"),
        "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "SHERLOCK_CACHE": str(tmp_path / "cache"),
        "PATH": os.environ["PATH"]}
    # the checkout as a wheel built now: pip caches a wheel it built from a directory under that directory's
    # URL, so a later run from the same path would install the old code
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "-q", "-w",
                    str(tmp_path / "wheel"), str(ROOT)], check=True)
    (wheel,) = (tmp_path / "wheel").glob("sherlock_vlm-*.whl")
    trainjob = {"backend": "local", "poll_s": 1, "timeout_s": 1800, "local_env": environment,
                "packages": ["torch==2.14.1", "torchvision==0.29.1", f"sherlock-vlm[tracking] @ {wheel.as_uri()}"]}
    output = sft.python_func(name="sft-r0", model=str(tiny_model_dir), data=str(subset_dir),
                             settings={"batch_size": 2, "max_steps": 2, "logging_steps": 1},
                             output_root=str(tmp_path / "runs"), pipeline_run_id="run-local", nproc_per_node=2,
                             trainjob=trainjob)
    assert output == str(tmp_path / "runs" / "run-local" / "sft-r0")
    log = capfd.readouterr().out
    assert "rank 1 of world size 2" in log and "Completed with code 0" in log
    state = json.loads((Path(output) / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and (Path(output) / "model.safetensors").is_file()


def test_trainjob_admission_admits_the_steps_trainjob_and_refuses_what_would_change_its_identity(cluster):
    """manifests/cluster-policy/trainjob-policy.yaml (CEL evaluated here: see tests/admission.py) against the
    TrainJob a step submits through the SDK, and against TrainJobs a pipeline step could submit instead."""
    import copy

    from tests.admission import admission

    options = ClusterOptions(trainer="trainjob", num_nodes=2, checkpoint_pvc="checkpoints", gpu_memory="512Gi",
                             s3_ca_configmap="sherlock-s3-ca")
    _, job = submitted(cluster, options)
    assert admission("sherlock-trainjobs", job) == []

    def pod(j):
        return j["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0][
            "template"]["spec"]["template"]

    def tampered(change) -> list[str]:
        changed = copy.deepcopy(job)
        change(changed)
        return admission("sherlock-trainjobs", changed)

    minio = {"name": "K", "valueFrom": {"secretKeyRef": {"name": "sherlock-minio", "key": "MINIO_ROOT_PASSWORD"}}}
    cases = {
        "the project's runtime": lambda j: j["spec"]["runtimeRef"].update(name="torch-distributed"),
        "the project's runtime (initializer)": lambda j: j["spec"].update(initializer={"model": {
            "storageUri": "hf://attacker/model"}}),
        "the project image": lambda j: j["spec"]["trainer"].update(image="docker.io/attacker/miner:1"),
        "ServiceAccount": lambda j: pod(j)["spec"].update(serviceAccountName="sherlock-deployer"),
        "ServiceAccount (host)": lambda j: pod(j)["spec"].update(hostNetwork=True),
        "only emptyDir": lambda j: pod(j)["spec"]["volumes"].append(
            {"name": "token", "secret": {"secretName": "sherlock-deployer-token"}}),
        "only emptyDir (root)": lambda j: pod(j)["spec"]["volumes"].append(
            {"name": "minio", "secret": {"secretName": "sherlock-minio"}}),
        "only emptyDir (host)": lambda j: pod(j)["spec"]["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
        "environment from": lambda j: pod(j)["spec"]["containers"][0]["env"].append(minio),
        "environment from (trainer)": lambda j: j["spec"]["trainer"].update(env=[minio]),
        "environment from (image)": lambda j: pod(j)["spec"]["containers"][0].update(image="attacker:1"),
        "a runtime patch sets (label)": lambda j: pod(j)["metadata"]["labels"].update(
            {"app.kubernetes.io/name": "mlflow"}),
        "a runtime patch sets (jobset)": lambda j: j["spec"]["runtimePatches"][0]["trainingRuntimeSpec"].update(
            mlPolicy={"numNodes": 64}),
    }
    for expected, change in cases.items():
        refused = tampered(change)
        assert len(refused) == 1 and expected.split(" (")[0] in refused[0], (expected, refused)
    # the project's own options, set the way an attacker would: refused before anything runs
    settings = settings_of(options, 1, service_account="sherlock-deployer",
                           volumes=[{"name": "t", "secret": {"secretName": "sherlock-deployer-token"}}])
    name = submit_trainjob(kubernetes_client(cluster), settings, "sft", {"model": "m", "data": "d", "output": "o"},
                           "run-2", 1, {})
    assert len(admission("sherlock-trainjobs", cluster.resources["trainjobs"][(NAMESPACE, name)])) == 2
