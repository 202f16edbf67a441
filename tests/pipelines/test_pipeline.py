"""The compiled pipelines (Sherlock, SCL, STIC, Octopus): in sync with their sources, sharing components,
platform settings task by task, and local runs."""

import json
import re
from pathlib import Path

import pytest
import yaml

from components.images import CPU_IMAGE, IMAGE
from pipelines import octopus, scl, sherlock, stic
from pipelines.common import ClusterOptions
from sherlock.serving.schema import validate_manifest

REPO = Path(__file__).resolve().parents[2]
RECIPES = {"sherlock": sherlock, "scl": scl, "stic": stic, "octopus": octopus}
GPU_STEPS = ("sft", "sample-rejected", "build-preferences", "train-preferences", "online", "evaluate",
             "scl-pairs", "stic-pairs", "stic-describe", "octopus-sft-data", "train-rl")
TRAINING_STEPS = ("sft", "train-preferences", "online", "train-rl")  # a /cache of cache_size; other GPU steps smaller
CPU_STEPS = ("prepare-inputs", "sample", "register-and-gate", "deploy")
NETWORK_STEPS = ("prepare-inputs", "sample", "register-and-gate", "deploy")
UNCACHED_STEPS = ("register-and-gate", "deploy")
# recipe -> (steps, checkpoints evaluated and registered, baselines evaluated only)
EXPECTED = {
    "sherlock": ({"sft", "sample-rejected", "build-preferences", "train-preferences", "online", "evaluate"},
                 4, 1),
    "scl": ({"sft", "scl-pairs", "train-preferences", "evaluate"}, 2, 0),
    "stic": ({"sft", "stic-pairs", "train-preferences", "stic-describe", "evaluate"}, 3, 0),
    "octopus": ({"sft", "octopus-sft-data", "train-rl", "evaluate"}, 4, 0),
}


def load(path: Path) -> tuple[dict, dict]:
    spec, platform = yaml.safe_load_all(path.read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


@pytest.fixture(scope="module", params=sorted(RECIPES))
def compiled(request):
    return (request.param, *load(RECIPES[request.param].PIPELINE_FILE))


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


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_committed_pipeline_is_in_sync_with_its_source(tmp_path, recipe):
    module = RECIPES[recipe]
    module.main(["--output", str(tmp_path / f"{recipe}.yaml")])
    fresh = list(yaml.safe_load_all((tmp_path / f"{recipe}.yaml").read_text()))
    # documents, not text: the compiler's header comment lists dict defaults in no fixed order
    assert fresh == list(yaml.safe_load_all(module.PIPELINE_FILE.read_text())), (
        f"pipelines/{recipe}.yaml is stale: run `python -m pipelines.{recipe}`")


def test_the_recipes_share_their_components():
    """A component the pipelines have in common is the same container (image, command, code) in each."""
    executors = {recipe: load(module.PIPELINE_FILE)[0]["deploymentSpec"]["executors"]
                 for recipe, module in RECIPES.items()}
    shared = {"exec-prepare-inputs", "exec-sample", "exec-sft", "exec-train-preferences", "exec-evaluate",
              "exec-register-and-gate", "exec-deploy"}
    for recipe in ("scl", "stic", "octopus"):
        assert shared - {"exec-train-preferences"} <= set(executors[recipe])
        for name in shared & set(executors[recipe]):
            assert executors[recipe][name] == executors["sherlock"][name], (recipe, name)


def test_every_stage_is_a_task_and_checkpoints_are_registered_in_order(compiled):
    recipe, spec, _ = compiled
    tasks = all_tasks(spec)
    steps, checkpoints, baselines = EXPECTED[recipe]
    assert {step(t) for t in tasks} == steps | set(CPU_STEPS)
    assert sum(step(t) == "register-and-gate" for t in tasks) == checkpoints
    assert sum(step(t) == "evaluate" for t in tasks) == checkpoints + baselines
    if recipe == "sherlock":
        assert sum(step(t) == "online" for t in tasks) == 2
        assert "online" in tasks["online-2"]["dependentTasks"]  # π_2 starts from π_1
    registers = sorted(t for t in tasks if step(t) == "register-and-gate")
    assert tasks[registers[0]]["inputs"]["parameters"]["promoted_before"]["runtimeValue"]["constant"] is False
    for earlier, later in zip(registers, registers[1:]):
        assert earlier in tasks[later]["dependentTasks"]  # aliases move one version at a time
        promoted_before = tasks[later]["inputs"]["parameters"]["promoted_before"]["taskOutputParameter"]
        assert promoted_before == {"outputParameterKey": "Output", "producerTask": earlier}


def test_deploy_runs_only_when_this_run_promoted_a_champion(compiled):
    recipe, spec, _ = compiled
    (condition,) = [t for t in spec["root"]["dag"]["tasks"].values() if "triggerPolicy" in t]
    last = f"register-and-gate-{EXPECTED[recipe][1]}"
    assert condition["triggerPolicy"]["condition"] == (
        f"inputs.parameter_values['pipelinechannel--{last}-Output'] == true")
    body = spec["components"][condition["componentRef"]["name"]]["dag"]["tasks"]
    assert [step(t) for t in body] == ["deploy"]


def test_gpu_and_cpu_steps_land_on_the_right_nodes(compiled):
    _, spec, executors = compiled
    options = ClusterOptions()
    for name, task in all_tasks(spec).items():
        executor = spec["components"][task["componentRef"]["name"]]["executorLabel"]
        container = spec["deploymentSpec"]["executors"][executor]["container"]
        platform = executors[executor]
        resources = container["resources"]
        if step(name) in GPU_STEPS:
            assert container["image"] == IMAGE
            assert resources["accelerator"]["resourceType"] == options.accelerator
            assert resources["accelerator"]["resourceCount"] == "{{$.inputs.parameters['pipelinechannel--gpus']}}", name
            assert resources["resourceCpuRequest"] == options.gpu_cpu
            assert resources["resourceMemoryRequest"] == resources["resourceMemoryLimit"] == options.gpu_memory
            assert platform["nodeSelector"]["labels"] == options.selector() == {"nvidia.com/gpu.present": "true"}
            assert platform["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
            assert platform["emptyDirMounts"] == [{"medium": "Memory", "mountPath": "/dev/shm",
                                                   "sizeLimit": options.shm_size, "volumeName": "dshm"}]
            cache = platform["genericEphemeralVolume"][0]
            assert cache["mountPath"] == "/cache"
            assert cache["size"] == (options.cache_size if step(name) in TRAINING_STEPS else
                                     options.generation_cache_size), name
            assert {"name": "SHERLOCK_CACHE", "value": "/cache"} in container["env"]
        else:
            assert container["image"] == CPU_IMAGE
            assert "accelerator" not in resources and "nodeSelector" not in platform and "tolerations" not in platform
            assert resources["resourceCpuRequest"] == options.cpu_cpu
            assert resources["resourceMemoryRequest"] == resources["resourceMemoryLimit"] == options.cpu_memory


# Every field of the compiled YAML's resources and kfp-kubernetes platform spec, each read by the KFP
# backend MIN_KFP_BACKEND (2.5.0): the resource fields of kubeflow/pipelines#11333 beside the
# deprecated ones the SDK still writes (#11839), a parameter in the GPU count (#11501), and the
# platform fields (secretAsEnv, podMetadata, nodeSelector, tolerations, emptyDirMounts #10913,
# genericEphemeralVolume #10602, pvcMount, secretAsVolume: kfp-kubernetes 1.0's first fields, configMapAsVolume
# #10483) from releases before it. A new field fails here until
# the version that reads it is checked and MIN_KFP_BACKEND raised where needed.
BACKEND_FIELDS = {
    "resources": {"cpuRequest", "memoryRequest", "memoryLimit", "resourceCpuRequest", "resourceMemoryRequest",
                  "resourceMemoryLimit", "accelerator"},
    "accelerator": {"count", "type", "resourceCount", "resourceType"},
    "platform": {"secretAsEnv", "podMetadata", "nodeSelector", "tolerations", "emptyDirMounts",
                 "genericEphemeralVolume", "pvcMount", "secretAsVolume", "configMapAsVolume"},
}


def test_the_compiled_yaml_needs_no_newer_kfp_backend_than_the_readme_states(compiled, tmp_path):
    from pipelines.common import MIN_KFP_BACKEND

    assert f"Kubeflow Pipelines backend {MIN_KFP_BACKEND} or later" in (REPO / "README.md").read_text()
    _, spec, executors = compiled
    _, with_pvc = load_compiled(tmp_path, "--checkpoint-pvc", "checkpoints")
    for executor in spec["deploymentSpec"]["executors"].values():
        resources = executor["container"]["resources"]
        assert set(resources) <= BACKEND_FIELDS["resources"], set(resources) - BACKEND_FIELDS["resources"]
        assert set(resources.get("accelerator", {})) <= BACKEND_FIELDS["accelerator"]
    for platform in [*executors.values(), *with_pvc.values()]:
        assert set(platform) <= BACKEND_FIELDS["platform"], set(platform) - BACKEND_FIELDS["platform"]


def test_credentials_come_only_from_secrets(compiled):
    _, spec, executors = compiled
    for executor, platform in executors.items():
        env = {e["envVar"]: s["secretName"] for s in platform["secretAsEnv"] for e in s["keyToEnv"]}
        assert env["AWS_SECRET_ACCESS_KEY"] == "sherlock-s3" and env["MLFLOW_TRACKING_URI"] == "sherlock-mlflow"
        container = spec["deploymentSpec"]["executors"][executor]["container"]
        assert not {e["name"] for e in container.get("env", [])} & {"AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"}
        assert container["command"][-1].count("pip install") == 0  # kfp is in the image
        assert platform["podMetadata"]["labels"] == {"sherlock.dev/s3-client": "true",  # admitted by manifests/
                                                     "sherlock.dev/mlflow-client": "true",
                                                     "sherlock.dev/pipeline-step": "true"}


def test_only_the_deploy_step_holds_the_deployers_token(compiled, tmp_path):
    from sherlock.serving.deploy import DEPLOYER_CREDENTIALS

    _, _, executors = compiled
    holders = {executor: platform["secretAsVolume"] for executor, platform in executors.items()
               if "secretAsVolume" in platform}
    assert holders == {"exec-deploy": [{"secretName": "sherlock-deployer-token", "mountPath": str(DEPLOYER_CREDENTIALS),
                                        "optional": False, "secretNameParameter": {
                                            "runtimeValue": {"constant": "sherlock-deployer-token"}}}]}
    _, without = load_compiled(tmp_path, "--deployer-secret", "")
    assert not [platform for platform in without.values() if "secretAsVolume" in platform]


def test_only_the_gate_and_deploy_steps_hold_the_gates_key(compiled, tmp_path):
    """Every step holds the pipeline's MLflow login (which may move aliases); the key that signs a promotion
    (sherlock.gate) is in the gate and deploy steps alone, so no other step can make a champion deployable."""
    from sherlock.gate import GATE_KEY_ENV

    def holders(executors):
        return {executor.rsplit("-", 1)[0] if executor[-1].isdigit() else executor
                for executor, platform in executors.items()
                for secret in platform.get("secretAsEnv", []) if secret["secretName"] == "sherlock-gate"
                and secret["keyToEnv"] == [{"secretKey": GATE_KEY_ENV, "envVar": GATE_KEY_ENV}]}

    _, _, executors = compiled
    assert holders(executors) == {"exec-register-and-gate", "exec-deploy"}
    _, without = load_compiled(tmp_path, "--gate-secret", "")
    assert holders(without) == set()


def test_a_private_s3_ca_is_trusted_by_every_step_and_trainjob(tmp_path):
    """``--s3-ca-configmap`` (MinIO with TLS: manifests/overlays/minio-tls): every step mounts the CA and
    points AWS_CA_BUNDLE at it (what sherlock.storage and MLflow's boto3 read), and so do TrainJobs."""
    from components.trainjob import TrainJobSettings
    from pipelines.common import S3_CA_BUNDLE, S3_CA_DIR
    from sherlock.config import load_config

    spec, executors = load_compiled(tmp_path, "--s3-ca-configmap", "sherlock-s3-ca", "--trainer", "trainjob")
    bundle = {"name": "AWS_CA_BUNDLE", "value": S3_CA_BUNDLE}
    for executor, platform in executors.items():
        assert set(platform) <= BACKEND_FIELDS["platform"]
        (mount,) = platform["configMapAsVolume"]
        assert (mount["configMapName"], mount["mountPath"]) == ("sherlock-s3-ca", S3_CA_DIR), executor
        assert bundle in spec["deploymentSpec"]["executors"][executor]["container"]["env"], executor
    trainjobs = [task["inputs"]["parameters"]["trainjob"]["runtimeValue"]["constant"]
                 for task in all_tasks(spec).values() if "trainjob" in task["inputs"]["parameters"]]
    assert trainjobs
    for trainjob in trainjobs:
        settings = load_config(TrainJobSettings, overrides=trainjob)
        assert {"name": "s3-ca", "configMap": {"name": "sherlock-s3-ca"}} in settings.volumes and bundle in settings.env
        assert {"name": "s3-ca", "mountPath": S3_CA_DIR, "readOnly": True} in settings.volume_mounts


def test_caching_and_retries_are_explicit_per_step(compiled):
    _, spec, _ = compiled
    for name, task in all_tasks(spec).items():
        cache = task["cachingOptions"].get("enableCache", False)
        assert cache is (step(name) not in UNCACHED_STEPS), name
        assert task["retryPolicy"]["maxRetryCount"] == (3 if step(name) in NETWORK_STEPS else 1), name


def load_compiled(tmp_path: Path, *options: str) -> tuple[dict, dict]:
    """The Sherlock pipeline compiled with ``options``: its spec and kubernetes executors."""
    sherlock.main(["--output", str(tmp_path / "p.yaml"), "--online-iterations", "1", *options])
    return load(tmp_path / "p.yaml")


def test_a_pvc_for_checkpoints_is_mounted_when_configured(tmp_path):
    _, executors = load_compiled(tmp_path, "--checkpoint-pvc", "sherlock-checkpoints")
    assert executors["exec-sft"]["pvcMount"][0]["mountPath"] == "/checkpoints"
    assert "pvcMount" not in executors["exec-register-and-gate"]


def test_with_trainjob_the_training_steps_submit_trainjobs_and_hold_no_gpu(tmp_path):
    """``--trainer trainjob``: a training step is a CPU task whose TrainJob (components/trainjob.py) gets the
    GPU step's resources, placement, volumes and secrets; an online iteration runs on one node."""
    from components.trainjob import TrainJobSettings
    from sherlock.config import load_config

    spec, executors = load_compiled(tmp_path, "--trainer", "trainjob", "--num-nodes", "4", "--checkpoint-pvc", "ck")
    options = ClusterOptions(trainer="trainjob", num_nodes=4, checkpoint_pvc="ck")
    seen = set()
    for name, task in all_tasks(spec).items():
        executor = spec["components"][task["componentRef"]["name"]]["executorLabel"]
        resources = spec["deploymentSpec"]["executors"][executor]["container"]["resources"]
        trainjob = task["inputs"]["parameters"].get("trainjob", {}).get("runtimeValue", {}).get("constant")
        if step(name) not in TRAINING_STEPS:
            assert trainjob is None, name
            assert ("accelerator" in resources) is (step(name) in GPU_STEPS), name
            continue
        seen.add(step(name))
        assert "accelerator" not in resources and "genericEphemeralVolume" not in executors[executor], name
        assert resources["resourceMemoryLimit"] == options.cpu_memory
        assert task["inputs"]["parameters"]["nproc_per_node"]["componentInputParameter"] == "gpus"
        settings = load_config(TrainJobSettings, overrides=trainjob)
        assert settings.num_nodes == (1 if step(name) == "online" else 4), name
        assert settings.runtime == "sherlock-torch" and settings.image == IMAGE
        assert settings.resources == {"cpu": options.gpu_cpu, "memory": options.gpu_memory}
        assert {m["mountPath"] for m in settings.volume_mounts} == {"/dev/shm", "/cache", "/checkpoints"}
        assert {"name": "cache", "ephemeral": {"volumeClaimTemplate": {"spec": {
            "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": options.cache_size}}}}}} \
            in settings.volumes
    assert seen == set(TRAINING_STEPS) - {"train-rl"}  # the Sherlock pipeline trains no RL step


@pytest.mark.parametrize("recipe", ["scl", "stic"])
def test_without_warm_start_the_recipe_starts_from_the_base_model(tmp_path, recipe):
    RECIPES[recipe].main(["--output", str(tmp_path / "p.yaml"), "--no-warm-start"])
    spec, _ = load(tmp_path / "p.yaml")
    tasks = all_tasks(spec)
    sft_names = [t["inputs"]["parameters"]["name"]["runtimeValue"]["constant"] for n, t in tasks.items()
                 if step(n) == "sft"]
    assert sft_names == ([] if recipe == "scl" else ["stic-stage2"])  # no R0 step
    first = tasks[f"{recipe}-pairs"]["inputs"]["parameters"]["model"]["taskOutputParameter"]
    assert first == {"outputParameterKey": "base_model", "producerTask": "prepare-inputs"}
    assert tasks["evaluate"]["inputs"]["parameters"]["name"]["runtimeValue"]["constant"] == "base"


def test_octopus_chains_its_stages_and_evaluates_its_checkpoints_by_its_own_protocol():
    """R0 → cold-start data on D_B → cold-start SFT from R0 → Stage I → Stage II on D_U, the RL steps on one rank;
    the Octopus checkpoints are evaluated with ``evaluate.octopus`` (continued rounds), R0 with ``evaluate``."""
    spec, _ = load(octopus.PIPELINE_FILE)
    tasks = all_tasks(spec)

    def source(task: str, parameter: str) -> tuple[str, str] | str:
        value = tasks[task]["inputs"]["parameters"][parameter]
        if "taskOutputParameter" in value:
            return value["taskOutputParameter"]["producerTask"], value["taskOutputParameter"]["outputParameterKey"]
        return value.get("componentInputParameter") or value["runtimeValue"]["constant"]

    assert source("octopus-sft-data", "model") == ("sft", "Output") and source("octopus-sft-data", "data")[1] == "d_b"
    assert (source("sft-2", "model"), source("sft-2", "data")) == (("sft", "Output"), ("octopus-sft-data", "Output"))
    assert (source("train-rl", "model"), source("train-rl-2", "model")) == (("sft-2", "Output"), ("train-rl", "Output"))
    assert source("train-rl", "data")[1] == source("train-rl-2", "data")[1] == "d_u"
    assert {source(task, "nproc_per_node") for task in ("train-rl", "train-rl-2", "sft")} == {"gpus"}
    evaluated = {source(t, "name"): source(t, "settings") for t in tasks if step(t) == "evaluate"}
    assert evaluated == {"r0": "evaluate_settings", "octopus-sft": "evaluate_octopus_settings",
                         "octopus-stage1": "evaluate_octopus_settings", "octopus": "evaluate_octopus_settings"}
    defaults = spec["root"]["inputDefinitions"]["parameters"]
    assert defaults["evaluate_octopus_settings"]["defaultValue"]["correction"] == "continue"
    assert defaults["train_rl_octopus_1_settings"]["defaultValue"]["mask"] == "every"
    assert defaults["train_rl_octopus_2_settings"]["defaultValue"]["mask"] == "changed"


def run_locally(recipe: str, workdir: Path, *options: str) -> tuple[dict, str]:
    """``python -m pipelines.run_local --recipe RECIPE --quick *options``; returns its summary and log."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "pipelines.run_local", "--recipe", recipe, "--quick", "--workdir", str(workdir),
               *options]
    result = subprocess.run(command, cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "served champion" in result.stdout and "| llava_cot |" in result.stdout
    return json.loads((workdir / "summary.json").read_text()), result.stdout + result.stderr


def check_deployed_champion(summary: dict, name: str, versions: int, workdir: Path) -> None:
    """The first gate promoted (empty registry), so the deploy step ran for this recipe's model."""
    import mlflow

    deployment = summary["deployment"]
    assert deployment["action"] == "manifest" and deployment["version"] == summary["champion_version"]
    manifest = yaml.safe_load(Path(deployment["manifest"]).read_text())
    validate_manifest(manifest)
    assert manifest["metadata"]["name"] == name  # the InferenceService is named after the registered model
    client = mlflow.MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    assert len(client.search_model_versions(f"name = '{name}'")) == versions
    assert len(summary["answer"]["rounds"]) == 2


def test_scl_pipeline_runs_end_to_end_locally(tmp_path):
    """SCL through kfp.local with ``gpus=2``: every GPU step on 2 ranks (torchrun, gloo), one MLflow
    run each (rank 0's); its pairs follow the typing rules and the trained step is DPO + SFT term."""
    from sherlock.data.llava_cot import load_llava_cot
    from sherlock.stages.scl_pairs import scl_correct

    summary, log = run_locally("scl", tmp_path, "--gpus", "2")
    gpu_steps = ["evaluate", "evaluate", "scl-pairs", "sft", "train-preferences"]
    assert sorted(s.split()[0] for s in summary["stage_seconds"]) == sorted(  # kfp.local runs ready tasks in any order
        ["sample", *gpu_steps])
    for rank in (0, 1):
        assert sorted(re.findall(rf"sherlock (\S+): rank {rank} of world size 2", log)) == gpu_steps
    run = tmp_path / "artifacts" / summary["pipeline_run_id"]
    records = {r.id: r for r in load_llava_cot(run / "subsets/D_B/data.jsonl").records}
    responses = [json.loads(line) for line in (run / "scl-pairs/responses.jsonl").read_text().splitlines()]
    stats = json.loads((run / "scl-pairs/stats.json").read_text())
    assert len(responses) == len(records) == 24 == sum(stats[f"type_{k}"] for k in (1, 2, 3, 4))
    pairs = {p["id"]: p for p in map(json.loads, (run / "scl-pairs/pairs.jsonl").read_text().splitlines())}
    assert stats["num_pairs"] == len(pairs) == stats["type_2"] + stats["type_3"] > 0
    for row in responses:
        record = records[row["id"]]
        assert (row["initial_correct"], row["refined_correct"]) == (scl_correct(row["initial"], record),
                                                                    scl_correct(row["refined"], record))
        if row["type"] in (2, 3):
            pair = pairs[row["id"]]
            better, worse = (row["refined"], row["initial"]) if row["type"] == 2 else (row["initial"], row["refined"])
            assert (pair["suffix_w"], pair["suffix_l"], pair["question"]) == (better, worse, record.question)
        else:
            assert row["id"] not in pairs
    trained = yaml.safe_load((run / "scl/stage_config.yaml").read_text())
    assert (trained["use_sc"], trained["dynamic_beta"], trained["dpo_beta"], trained["sft_weight"],
            trained["finetuning"]) == (False, False, 0.1, 0.1, "lora")
    logs = json.loads((run / "scl/trainer_state.json").read_text())["log_history"]
    assert logs[0]["loss/sc"] == 0 and logs[0]["loss/sft"] > 0 and logs[0]["beta/dpo_mean"] == pytest.approx(0.1)
    check_deployed_champion(summary, "scl-embedded", 2, tmp_path)


def test_stic_pipeline_runs_end_to_end_locally(tmp_path):
    """STIC through kfp.local: description pairs on D_U, stage 1, a described D_A subset, stage 2 from stage 1."""
    from sherlock.data.llava_cot import load_llava_cot
    from sherlock.prompts import STIC_SIMPLE_PROMPTS

    summary, _ = run_locally("stic", tmp_path)
    assert sorted(s.split()[0] for s in summary["stage_seconds"]) == [
        "evaluate", "evaluate", "evaluate", "sample", "sft", "sft", "stic-describe", "stic-pairs", "train-preferences"]
    run = tmp_path / "artifacts" / summary["pipeline_run_id"]
    pairs = [json.loads(line) for line in (run / "stic-pairs/pairs.jsonl").read_text().splitlines()]
    unlabeled = {r.id for r in load_llava_cot(run / "subsets/D_U/data.jsonl").records}
    assert pairs and {p["id"] for p in pairs} <= unlabeled and all(p["question"] in STIC_SIMPLE_PROMPTS for p in pairs)
    stage1 = yaml.safe_load((run / "stic-stage1/stage_config.yaml").read_text())
    assert (stage1["sft_weight"], stage1["sft_per_token"], stage1["dpo_beta"]) == (1 / 1024, False, 0.1)
    described = load_llava_cot(run / "stic-described/data.jsonl").records
    assert len(described) == 4 and all(r.question.startswith("Image description:\n") for r in described)
    stage2 = yaml.safe_load((run / "stic-stage2/stage_config.yaml").read_text())
    assert stage2["model"].endswith("stic-stage1") and stage2["data"].endswith("stic-described")
    check_deployed_champion(summary, "stic-embedded", 3, tmp_path)


def test_octopus_pipeline_runs_end_to_end_locally(tmp_path):
    """Octopus through kfp.local: R0 → its own answers with gold second attempts → the cold-start SFT, its tags
    single tokens → Stage I → Stage II from Stage I, each writing per-step reward statistics → every checkpoint
    evaluated (the Octopus ones by continuing the response), registered, the champion deployed."""
    import mlflow

    from sherlock.data.llava_cot import load_llava_cot
    from sherlock.models.loading import load_processor
    from sherlock.protocol import SHERLOCK, Protocol, read_protocol
    from sherlock.reasoning import SC_CLOSE, SC_OPEN, SEP

    summary, _ = run_locally("octopus", tmp_path)
    assert sorted(s.split()[0] for s in summary["stage_seconds"]) == [
        "evaluate", "evaluate", "evaluate", "evaluate", "octopus-sft-data", "sample", "sft", "sft", "train-rl",
        "train-rl"]
    run = tmp_path / "artifacts" / summary["pipeline_run_id"]
    cold = load_llava_cot(run / "octopus-sft-data/data.jsonl").records
    stats = json.loads((run / "octopus-sft-data/stats.json").read_text())
    assert len(cold) == stats["wc_examples"] + stats["cc_examples"] and stats["wc_examples"] > 0
    assert stats["o2_rewritten"] + stats["o2_gold"] == len(cold)  # the quick run rewrites o2 with R0
    assert all(r.response.count(SEP) == 1 and r.question.endswith("from scratch after that.") for r in cold)
    tokenizer = load_processor(run / "octopus-sft").tokenizer
    assert all(len(tokenizer(tag, add_special_tokens=False).input_ids) == 1 for tag in (SC_OPEN, SC_CLOSE))
    for step, mask, kl, start in (("octopus-stage1", "every", 0.01, "octopus-sft"),
                                  ("octopus-stage2", "changed", 0.0, "octopus-stage1")):
        config = yaml.safe_load((run / step / "stage_config.yaml").read_text())
        assert (config["mask"], config["o1_kl"], config["max_steps"]) == (mask, kl, 2) and config["model"].endswith(
            start)
        steps = [json.loads(line) for line in (run / step / "rewards.jsonl").read_text().splitlines()]
        assert len(steps) == 1  # one generation batch (steps_per_generation 4) in the two steps
        assert {"reward", "octopus/pool_size", "octopus/positive_share_trained"} <= set(steps[0])
    for name in ("r0", "octopus-sft", "octopus-stage1", "octopus"):  # R0 as it declares, the others by the preset
        config = yaml.safe_load((run / f"eval-{name}" / "stage_config.yaml").read_text())
        asked = json.loads((run / f"eval-{name}" / "metrics.json").read_text())["self_correction"]["correction"]
        assert (config["correction"], asked) == ((None, "prompt") if name == "r0" else ("continue",) * 2), name
    # each checkpoint says how it self-corrects: R0 Sherlock's way, the cold start (its data's) and RL continue
    assert read_protocol(run / "r0") == SHERLOCK and read_protocol(run / "octopus-sft-data") == Protocol("continue")
    assert all(read_protocol(run / step) == Protocol("continue") for step in ("octopus-sft", "octopus-stage1",
                                                                            "octopus-stage2"))
    check_deployed_champion(summary, "octopus-embedded", 4, tmp_path)
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    served_as = sorted(v.tags["self_correction.correction"] for v in client.search_model_versions(
        "name = 'octopus-embedded'"))
    assert served_as == ["continue", "continue", "continue", "prompt"]  # the registry shows how each answers


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
    assert len(summary["stage_seconds"]) == 9  # sft twice (r0, sherlock-sft); evaluate R0 and two checkpoints
    assert len(summary["answer"]["rounds"]) == 2  # direct + one correction round, from the served champion
    deployment = summary["deployment"]  # the first gate promoted (empty registry): the deploy step ran
    assert deployment["action"] == "manifest" and deployment["version"] == summary["champion_version"]
    manifest = yaml.safe_load(Path(deployment["manifest"]).read_text())
    validate_manifest(manifest)
    assert manifest["spec"]["predictor"]["containers"][0]["image"] == CPU_IMAGE
    output = result.details["output"]
    assert "served champion" in output and "accuracy (%)" in output and "| llava_cot |" in output
    metrics = [json.loads(p.read_text()) for p in (tmp_path / "kfp").glob("*/evaluate*/executor_output.json")]
    assert len(metrics) == 3
    reports = list((tmp_path / "kfp").glob("*/evaluate*/report"))
    assert len(reports) == 3 and all("accuracy per self-correction round" in r.read_text() for r in reports)
    # a real table under the checkpoint's name, with the baselines beside the rounds
    assert all("<th>blank image</th><th>blind prior</th>" in r.read_text() and "<h2>" in r.read_text()
               and "<pre>" not in r.read_text() for r in reports)
