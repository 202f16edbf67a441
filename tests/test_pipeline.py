"""The compiled pipeline: in sync with its source, platform settings task by task, and a local run."""

import json
from pathlib import Path

import pytest
import yaml

from components import CPU_IMAGE, IMAGE
from pipelines.sherlock import PIPELINE_FILE, ClusterOptions, main
from sherlock.serving.schema import validate_manifest

GPU_STEPS = ("sft", "sample-rejected", "build-preferences", "train-preferences", "online-iteration", "evaluate")
CPU_STEPS = ("prepare-inputs", "sample-data", "register-and-gate", "deploy")
NETWORK_STEPS = ("prepare-inputs", "sample-data", "register-and-gate", "deploy")
UNCACHED_STEPS = ("register-and-gate", "deploy")


@pytest.fixture(scope="module")
def compiled():
    spec, platform = yaml.safe_load_all(PIPELINE_FILE.read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def all_tasks(spec: dict) -> dict:
    """Every task of the pipeline: the root DAG's and those inside its conditions."""
    tasks = dict(spec["root"]["dag"]["tasks"])
    for name, task in spec["root"]["dag"]["tasks"].items():
        tasks |= spec["components"][task["componentRef"]["name"]].get("dag", {}).get("tasks", {})
        if "dag" in spec["components"][task["componentRef"]["name"]]:
            del tasks[name]
    return tasks


def step(task_name: str) -> str:
    """``sft-2`` → ``sft``: the component a task instantiates."""
    base = task_name.rsplit("-", 1)[0] if task_name.rsplit("-", 1)[-1].isdigit() else task_name
    return base


def test_committed_pipeline_is_in_sync_with_its_source(tmp_path):
    main(["--output", str(tmp_path / "sherlock.yaml")])
    fresh = list(yaml.safe_load_all((tmp_path / "sherlock.yaml").read_text()))
    # documents, not text: the compiler's header comment lists dict defaults in no fixed order
    assert fresh == list(yaml.safe_load_all(PIPELINE_FILE.read_text())), (
        "pipelines/sherlock.yaml is stale: run `python -m pipelines.sherlock`")


def test_every_stage_is_a_task_and_online_iterations_are_unrolled(compiled):
    spec, _ = compiled
    tasks = all_tasks(spec)
    assert sorted({step(t) for t in tasks}) == sorted(GPU_STEPS + CPU_STEPS)
    assert sum(step(t) == "online-iteration" for t in tasks) == 2
    assert sum(step(t) == "evaluate" for t in tasks) == sum(step(t) == "register-and-gate" for t in tasks) == 4
    online_2 = tasks["online-iteration-2"]
    assert "online-iteration" in online_2["dependentTasks"]  # π_2 starts from π_1
    registers = sorted(t for t in tasks if step(t) == "register-and-gate")
    assert tasks[registers[0]]["inputs"]["parameters"]["promoted_before"]["runtimeValue"]["constant"] is False
    for earlier, later in zip(registers, registers[1:]):
        assert earlier in tasks[later]["dependentTasks"]  # aliases move one version at a time
        promoted_before = tasks[later]["inputs"]["parameters"]["promoted_before"]["taskOutputParameter"]
        assert promoted_before == {"outputParameterKey": "Output", "producerTask": earlier}


def test_deploy_runs_only_when_this_run_promoted_a_champion(compiled):
    spec, _ = compiled
    (condition,) = [t for t in spec["root"]["dag"]["tasks"].values() if "triggerPolicy" in t]
    assert condition["triggerPolicy"]["condition"] == (
        "inputs.parameter_values['pipelinechannel--register-and-gate-4-Output'] == true")
    body = spec["components"][condition["componentRef"]["name"]]["dag"]["tasks"]
    assert [step(t) for t in body] == ["deploy"]


def test_gpu_and_cpu_steps_land_on_the_right_nodes(compiled):
    spec, executors = compiled
    options = ClusterOptions()
    for name, task in all_tasks(spec).items():
        executor = spec["components"][task["componentRef"]["name"]]["executorLabel"]
        container = spec["deploymentSpec"]["executors"][executor]["container"]
        platform = executors[executor]
        resources = container["resources"]
        if step(name) in GPU_STEPS:
            assert container["image"] == IMAGE
            assert resources["accelerator"]["resourceType"] == options.accelerator
            assert resources["accelerator"]["resourceCount"] == "{{$.inputs.parameters['pipelinechannel--gpus']}}"
            assert resources["resourceCpuRequest"] == options.gpu_cpu
            assert resources["resourceMemoryRequest"] == options.gpu_memory
            assert platform["nodeSelector"]["labels"] == dict([options.node_selector])
            assert platform["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
            assert platform["emptyDirMounts"] == [{"medium": "Memory", "mountPath": "/dev/shm",
                                                   "sizeLimit": options.shm_size, "volumeName": "dshm"}]
            assert platform["genericEphemeralVolume"][0]["mountPath"] == "/cache"
            assert {"name": "SHERLOCK_CACHE", "value": "/cache"} in container["env"]
        else:
            assert container["image"] == CPU_IMAGE
            assert "accelerator" not in resources and "nodeSelector" not in platform and "tolerations" not in platform
            assert resources["resourceCpuRequest"] == options.cpu_cpu


def test_credentials_come_only_from_secrets(compiled):
    spec, executors = compiled
    for executor, platform in executors.items():
        env = {e["envVar"]: s["secretName"] for s in platform["secretAsEnv"] for e in s["keyToEnv"]}
        assert env["AWS_SECRET_ACCESS_KEY"] == "sherlock-s3" and env["MLFLOW_TRACKING_URI"] == "sherlock-mlflow"
        container = spec["deploymentSpec"]["executors"][executor]["container"]
        assert not {e["name"] for e in container.get("env", [])} & {"AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"}
        assert container["command"][-1].count("pip install") == 0  # kfp is in the image
        assert platform["podMetadata"]["labels"] == {"sherlock.dev/s3-client": "true",  # admitted by manifests/
                                                     "sherlock.dev/mlflow-client": "true"}


def test_caching_and_retries_are_explicit_per_step(compiled):
    spec, _ = compiled
    for name, task in all_tasks(spec).items():
        cache = task["cachingOptions"].get("enableCache", False)
        assert cache is (step(name) not in UNCACHED_STEPS), name
        assert task["retryPolicy"]["maxRetryCount"] == (3 if step(name) in NETWORK_STEPS else 1), name


def test_a_pvc_for_checkpoints_is_mounted_when_configured(tmp_path):
    main(["--output", str(tmp_path / "p.yaml"), "--checkpoint-pvc", "sherlock-checkpoints", "--online-iterations", "1"])
    _, platform = yaml.safe_load_all((tmp_path / "p.yaml").read_text())
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert executors["exec-sft"]["pvcMount"][0]["mountPath"] == "/checkpoints"
    assert "pvcMount" not in executors["exec-register-and-gate"]


def test_reduced_pipeline_runs_end_to_end_locally(tmp_path):
    """The same pipeline (K = 0) through kfp.local: MLflow on sqlite, artifacts on disk, champion answers.

    Run as benchmark P4's quick mode, which also checks that benchmark.
    """
    from bench import p4_pipeline

    result = p4_pipeline.run(tmp_path, quick=True)
    assert result.details["command"].endswith("--quick --online-iterations 0")
    assert result.project > 0 and result.ratio == pytest.approx(p4_pipeline.BUDGET_MINUTES / result.project)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {s.split()[0] for s in summary["stage_seconds"]} == {
        "sample", "sft", "sample-rejected", "build-preferences", "train-preferences", "evaluate"}
    assert len(summary["stage_seconds"]) == 8  # sft and evaluate twice each: r0 / sherlock-sft, two checkpoints
    assert len(summary["answer"]["rounds"]) == 2  # direct + one correction round, from the served champion
    deployment = summary["deployment"]  # the first gate promoted (empty registry): the deploy step ran
    assert deployment["action"] == "manifest" and deployment["version"] == summary["champion_version"]
    manifest = yaml.safe_load(Path(deployment["manifest"]).read_text())
    validate_manifest(manifest)
    assert manifest["spec"]["predictor"]["containers"][0]["image"] == CPU_IMAGE
    output = result.details["output"]
    assert "served champion" in output and "accuracy (%)" in output and "| llava_cot |" in output
    metrics = [json.loads(p.read_text()) for p in (tmp_path / "kfp").glob("*/evaluate*/executor_output.json")]
    assert len(metrics) == 2
    reports = list((tmp_path / "kfp").glob("*/evaluate*/report"))
    assert len(reports) == 2 and all("accuracy per self-correction round" in r.read_text() for r in reports)
