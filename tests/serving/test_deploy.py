"""Deploy stage: the InferenceService the KServe SDK builds, its offline validation, create/patch/wait."""

from __future__ import annotations

import copy
import json

import mlflow
import pytest
import yaml
from servers import self_signed_certificate

from sherlock import tracking
from sherlock.config import ConfigError, load_config
from sherlock.gate import GATE_KEY_ENV, GATE_SIGNATURE_TAG
from sherlock.serving.deploy import MANIFEST_FILE, DeployConfig, DeployError, run_deploy
from sherlock.serving.schema import KSERVE_KINDS, ManifestError, generate_schema, schema_file, validate_manifest
from sherlock.stages.sample import SampleConfig
from sherlock.storage import directory_digest, publish, split_s3_uri
from sherlock.tracking import DIGEST_TAG
from tests.kube_api import KubeAPI

PIPELINE_RUN = "run-1"


def published_checkpoint(tmp_path, uri: str, weights: bytes = b"w" * 64) -> str:
    """A small checkpoint directory published (with its SHA256SUMS) to ``uri`` on the S3 server."""
    local = tmp_path / uri.rsplit("/", 1)[-1]
    local.mkdir()
    (local / "config.json").write_text("{}")
    (local / "model.safetensors").write_bytes(weights)
    return publish(local, uri)


def register(client, uri: str, tags: dict | None = None) -> str:
    """A version registered the way the pipeline registers checkpoints: logged in a stage run of pipeline run
    ``PIPELINE_RUN``, with its URI and SHA256SUMS digest (``tags`` replace those; a None value drops one)."""
    with tracking.stage_run("sft", SampleConfig(data="d", output="o"), PIPELINE_RUN) as run:
        pass
    tags = {"checkpoint_uri": uri, "pipeline_run_id": PIPELINE_RUN} | (
        tags if tags is not None and DIGEST_TAG in tags else {DIGEST_TAG: directory_digest(uri)}) | (tags or {})
    return client.create_model_version("sherlock", source=uri, run_id=run.info.run_id,
                                       tags={key: value for key, value in tags.items() if value is not None}).version


@pytest.fixture
def checkpoint(bucket, tmp_path):
    return published_checkpoint(tmp_path, f"s3://{bucket}/runs/run-1/sherlock-offline")


@pytest.fixture
def registry(checkpoint, tmp_path, monkeypatch):
    """Real MLflow (sqlite) with one version of a checkpoint on moto's S3 server, registered as the
    pipeline registers it."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    mlflow.create_experiment("sherlock", artifact_location=(tmp_path / "artifacts").as_uri())
    client = mlflow.MlflowClient()
    client.create_registered_model("sherlock")
    client.set_registered_model_alias("sherlock", "champion", register(client, checkpoint))
    return client


def deploy(tmp_path, **overrides) -> dict:
    bucket = split_s3_uri(mlflow.MlflowClient().get_model_version("sherlock", "1").source)[0]  # the fixture's
    config = load_config(DeployConfig, overrides={"model": "models:/sherlock@champion",
                                                  "output": str(tmp_path / "deploy"),
                                                  "checkpoint_roots": f"s3://{bucket}/runs/", **overrides})
    return run_deploy(config)


@pytest.mark.parametrize("kind", sorted(KSERVE_KINDS))
def test_committed_schemas_match_the_generator(kind):
    assert json.loads(schema_file(kind).read_text()) == generate_schema(kind)


def test_manifest_without_a_cluster(registry, checkpoint, tmp_path):
    result = deploy(tmp_path, node_selector="pool=gpu,nvidia.com/gpu.present=true", tolerations="nvidia.com/gpu,spot")
    assert result["mode"] == "manifest" and result["action"] == "manifest" and result["url"] is None
    manifest = yaml.safe_load((tmp_path / "deploy" / MANIFEST_FILE).read_text())
    validate_manifest(manifest)
    predictor = manifest["spec"]["predictor"]
    container = predictor["containers"][0]
    assert manifest["metadata"] == manifest["metadata"] | {"name": "sherlock", "namespace": "sherlock"}
    assert {"name": "STORAGE_URI", "value": checkpoint} in container["env"]
    assert container["args"][:2] == ["--model", "/mnt/models"] and container["image"].endswith("-cuda")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert predictor["nodeSelector"] == {"pool": "gpu", "nvidia.com/gpu.present": "true"}
    assert [t["key"] for t in predictor["tolerations"]] == ["nvidia.com/gpu", "spot"]
    assert predictor["serviceAccountName"] == "sherlock-serving" and "canaryTrafficPercent" not in predictor
    assert container["readinessProbe"]["httpGet"]["path"] == "/v1/models/sherlock"
    assert container["livenessProbe"]["httpGet"]["path"] == "/"
    assert container["securityContext"]["runAsNonRoot"] and container["securityContext"]["readOnlyRootFilesystem"]
    tags = registry.get_model_version("sherlock", result["version"]).tags
    assert tags["serving.action"] == "manifest" and tags["serving.manifest"] == result["manifest"]
    assert "serving.url" not in tags


def test_every_path_the_server_writes_is_an_empty_dir_on_the_read_only_root(registry, tmp_path):
    """The image's SHERLOCK_CACHE, HOME and /tmp are emptyDir mounts: writable by any uid the pod runs as."""
    import re
    from pathlib import Path

    deploy(tmp_path)
    predictor = yaml.safe_load((tmp_path / "deploy" / MANIFEST_FILE).read_text())["spec"]["predictor"]
    (container,) = predictor["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    empty_dirs = {volume["name"] for volume in predictor["volumes"] if "emptyDir" in volume}
    mounts = [m["mountPath"] for m in container["volumeMounts"] if m["name"] in empty_dirs]
    env = {variable["name"]: variable["value"] for variable in container["env"]}
    dockerfile = (Path(__file__).resolve().parents[2] / "Dockerfile").read_text()
    image_env = dict(re.findall(r"^\s+(SHERLOCK_CACHE|MPLCONFIGDIR)=(\S+)", dockerfile, re.MULTILINE))
    assert env["SHERLOCK_CACHE"] == image_env["SHERLOCK_CACHE"]
    for path in (env["SHERLOCK_CACHE"], env["HOME"], image_env["MPLCONFIGDIR"], "/tmp"):
        assert any(path == mount or path.startswith(mount + "/") for mount in mounts), (path, mounts)
    assert container["args"][container["args"].index("--host") + 1] == "0.0.0.0"


def test_cpu_only_manifest_has_no_gpu_scheduling(registry, tmp_path):
    deploy(tmp_path, gpus=0, node_selector="", tolerations="")
    predictor = yaml.safe_load((tmp_path / "deploy" / MANIFEST_FILE).read_text())["spec"]["predictor"]
    assert "nvidia.com/gpu" not in predictor["containers"][0]["resources"]["limits"]
    assert "nodeSelector" not in predictor and "tolerations" not in predictor


@pytest.mark.parametrize("path, value, message", [
    (("containers", 0, "readinessProbe", "httpGet", "pathh"), "/", "'pathh' was unexpected"),
    (("minReplicas",), "one", "'one' is not of type 'integer'"),
    (("tolerations", 0, "operator"), 5, "5 is not of type"),
    (("containers", 0, "resources", "limits", "memory"), [1], "is not valid"),
    (("canaryTrafficPercent",), "20%", "is not of type 'integer'"),
])
def test_validation_names_the_bad_field(registry, tmp_path, path, value, message):
    deploy(tmp_path)
    manifest = yaml.safe_load((tmp_path / "deploy" / MANIFEST_FILE).read_text())
    bad = copy.deepcopy(manifest)
    target = bad["spec"]["predictor"]
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(ManifestError, match=message) as error:
        validate_manifest(bad)
    assert "InferenceService/sherlock: spec.predictor." in str(error.value)
    del bad["spec"]["predictor"]
    with pytest.raises(ManifestError, match="'predictor' is a required property"):
        validate_manifest(bad)


@pytest.mark.parametrize("overrides, message", [
    ({"model": "s3://bucket/checkpoint"}, "models:/"), ({"mode": "apply"}, "mode must be"),
    ({"canary_traffic_percent": 0}, "canary_traffic_percent"), ({"node_selector": "gpu"}, "LABEL=VALUE"),
    ({"min_replicas": 2, "max_replicas": 1}, "max_replicas"),
])
def test_bad_settings_are_config_errors(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(DeployConfig, overrides={"model": "models:/m@champion", "output": str(tmp_path)} | overrides)


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    api = KubeAPI(ready_after_polls=2)
    monkeypatch.setenv("KUBECONFIG", str(api.kubeconfig(tmp_path / "kubeconfig")))
    yield api
    api.close()


def test_create_then_canary_patch_waits_for_the_new_generation(registry, checkpoint, cluster, tmp_path):
    first = deploy(tmp_path, poll_seconds=0.05)
    assert first["mode"] == "cluster" and first["action"] == "created"
    assert first["url"] == "http://sherlock.sherlock.example.com"
    methods = [(r["method"], r["path"].split("?")[0].rsplit("/", 1)[-1]) for r in cluster.requests]
    assert methods[:2] == [("GET", "sherlock"), ("POST", "inferenceservices")]
    assert cluster.requests[0]["authorization"] == "Bearer test-token"
    created = cluster.objects[("sherlock", "sherlock")]
    validate_manifest({k: v for k, v in created.items() if k != "status"} | {
        "metadata": {k: v for k, v in created["metadata"].items() if k not in ("generation", "resourceVersion")}})
    tags = registry.get_model_version("sherlock", first["version"]).tags
    assert tags["serving.url"] == first["url"] and tags["serving.action"] == "created"

    second_version = register(registry, published_checkpoint(tmp_path, checkpoint + "-v2", b"v" * 64))
    registry.set_registered_model_alias("sherlock", "champion", second_version)
    cluster.requests.clear()
    second = deploy(tmp_path, canary_traffic_percent=20, poll_seconds=0.05)
    assert second["action"] == "patched" and second["version"] == str(second_version)
    patch = next(r for r in cluster.requests if r["method"] == "PATCH")
    assert patch["content_type"] == "application/merge-patch+json"
    assert patch["body"]["spec"]["predictor"]["canaryTrafficPercent"] == 20
    patched = cluster.objects[("sherlock", "sherlock")]
    assert patched["metadata"]["generation"] == 2 and patched["status"]["observedGeneration"] == 2
    assert {"name": "STORAGE_URI", "value": checkpoint + "-v2"} in patched["spec"]["predictor"]["containers"][0]["env"]
    # the old generation's Ready status (still there after the patch) was not taken for the new one:
    # it polled until generation 2 was observed (3 polls), then read the endpoint
    after_patch = cluster.requests[cluster.requests.index(patch) + 1:]
    assert [r["method"] for r in after_patch] == ["GET"] * 4
    tags = registry.get_model_version("sherlock", second_version).tags
    assert tags["serving.canary_traffic_percent"] == "20" and tags["serving.action"] == "patched"


def test_never_ready_times_out_with_a_named_error(registry, tmp_path, monkeypatch):
    api = KubeAPI(ready_after_polls=None)
    monkeypatch.setenv("KUBECONFIG", str(api.kubeconfig(tmp_path / "kubeconfig")))
    try:
        with pytest.raises(DeployError, match="sherlock/sherlock: Timeout"):
            deploy(tmp_path, timeout_seconds=1, poll_seconds=0.25)
    finally:
        api.close()
    assert "serving.url" not in registry.get_model_version_by_alias("sherlock", "champion").tags


def test_forbidden_and_unfetchable_checkpoints_are_named(registry, tmp_path, monkeypatch):
    api = KubeAPI(forbidden=True)
    monkeypatch.setenv("KUBECONFIG", str(api.kubeconfig(tmp_path / "kubeconfig")))
    try:
        with pytest.raises(DeployError, match="403 Forbidden"):
            deploy(tmp_path)
    finally:
        api.close()
    (tmp_path / "local").mkdir()
    local = register(registry, str(tmp_path / "local"))
    with pytest.raises(DeployError, match="which a cluster cannot fetch"):
        deploy(tmp_path, model=f"models:/sherlock/{local}", mode="cluster", checkpoint_roots=str(tmp_path))
    unregistered = registry.create_model_version("sherlock", source=str(tmp_path))  # by hand, no pipeline
    with pytest.raises(DeployError, match="no pipeline_run_id tag"):
        deploy(tmp_path, model=f"models:/sherlock/{unregistered.version}")
    untagged = register(registry, str(tmp_path), {"checkpoint_uri": None, DIGEST_TAG: None})
    with pytest.raises(DeployError, match="no checkpoint_uri tag"):
        deploy(tmp_path, model=f"models:/sherlock/{untagged}")


def test_a_checkpoint_outside_the_roots_or_not_the_registered_one_is_refused(registry, checkpoint, cluster, tmp_path):
    """Refused before anything reaches the cluster: a URI outside the roots (or climbing out of them),
    a checkpoint replaced after registration (objects and SHA256SUMS together), a version without a digest."""
    import shutil

    def champion(uri: str, digest: str | None = "0" * 64) -> None:
        registry.set_registered_model_alias("sherlock", "champion", register(registry, uri, {DIGEST_TAG: digest}))

    champion("https://attacker.invalid/evil-model")
    with pytest.raises(DeployError, match="outside the checkpoint roots"):
        deploy(tmp_path)
    champion(checkpoint + "/../../../elsewhere/model")
    with pytest.raises(DeployError, match="outside the checkpoint roots"):
        deploy(tmp_path)
    champion(checkpoint, digest=None)
    with pytest.raises(DeployError, match="records no checkpoint_sha256sums"):
        deploy(tmp_path)
    registry.set_registered_model_alias("sherlock", "champion", "1")
    shutil.rmtree(tmp_path / "sherlock-offline")
    published_checkpoint(tmp_path, checkpoint, b"e" * 64)  # consistent with its own SHA256SUMS, not the registered one
    with pytest.raises(DeployError, match="is not the checkpoint registered as version 1"):
        deploy(tmp_path)
    assert cluster.requests == []


def test_the_deploy_step_writes_as_the_deployer_whose_token_is_mounted(registry, tmp_path, monkeypatch):
    """The pipeline mounts the deployer's token Secret into the deploy step alone; the step's own
    ServiceAccount (the kubeconfig's token here) may not write InferenceServices. No kube-apiserver runs
    here: :class:`tests.kube_api.KubeAPI` serves the calls over TLS and records the bearer of each."""
    from sherlock.serving import deploy as deploy_module

    api = KubeAPI(ready_after_polls=1, tls_dir=tmp_path / "tls")
    credentials = tmp_path / "deployer"
    credentials.mkdir()
    (credentials / "token").write_text("deployer-token")
    (credentials / "ca.crt").write_bytes(api.ca_file.read_bytes())
    monkeypatch.setattr(deploy_module, "DEPLOYER_CREDENTIALS", credentials)
    monkeypatch.setenv("KUBECONFIG", str(api.kubeconfig(tmp_path / "kubeconfig")))  # the run's own account
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(api.port))
    try:
        result = deploy(tmp_path, poll_seconds=0.05)
        assert result["action"] == "created" and ("sherlock", "sherlock") in api.objects
        assert {r["authorization"] for r in api.requests} == {"Bearer deployer-token"}
        (credentials / "ca.crt").write_bytes(self_signed_certificate(tmp_path / "other").read_bytes())
        with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):  # the server is verified by the CA
            deploy(tmp_path, poll_seconds=0.05)
    finally:
        api.close()
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    with pytest.raises(DeployError, match="not in a pod"):
        deploy(tmp_path, mode="cluster")


def test_deploy_and_serve_refuse_a_champion_the_gate_did_not_promote(registry, checkpoint, tmp_path, monkeypatch):
    """The attack: with the pipeline's MLflow login and S3 key (what every step holds), a checkpoint is
    logged in a forged stage run of a pipeline run, with its own digest, and champion moved to it. The
    gate signs what it promotes with a key mounted into the gate and deploy steps alone; deploy and serve
    check the signature: refused. The version the gate promoted deploys."""
    monkeypatch.setenv(GATE_KEY_ENV, "k" * 64)
    registry.delete_registered_model_alias("sherlock", "champion")
    registry.set_model_version_tag("sherlock", "1", "eval.acc", "50")
    assert tracking.gate_champion("sherlock", "1", "acc", PIPELINE_RUN)["promoted"]
    assert deploy(tmp_path)["version"] == "1"

    forged = register(registry, published_checkpoint(tmp_path, f"s3://{split_s3_uri(checkpoint)[0]}/runs/run-1/evil",
                                                     b"x" * 64))
    registry.set_registered_model_alias("sherlock", "champion", forged)
    with pytest.raises(DeployError, match="no valid gate.signature"):
        deploy(tmp_path)
    signed = registry.get_model_version("sherlock", "1").tags[GATE_SIGNATURE_TAG]
    registry.set_model_version_tag("sherlock", forged, GATE_SIGNATURE_TAG, signed)  # copied: fits no other
    with pytest.raises(DeployError, match="no valid gate.signature"):
        deploy(tmp_path)
    with pytest.raises(tracking.ProvenanceError, match="no valid gate.signature"):
        tracking.download_checkpoint("models:/sherlock@champion")  # what sherlock serve --model models:/… loads
    registry.set_model_version_tag("sherlock", "1", "checkpoint_uri", f"{checkpoint}-v2")  # a signed tag changed
    with pytest.raises(DeployError, match="no valid gate.signature"):
        deploy(tmp_path, model="models:/sherlock/1")
    monkeypatch.setenv(GATE_KEY_ENV, "short")
    with pytest.raises(DeployError, match="needs 32 or more"):
        deploy(tmp_path)


def test_the_gate_does_not_defend_a_champion_it_never_signed(registry, checkpoint, tmp_path, monkeypatch):
    """A champion moved by another hand (or promoted before signatures) is not a score to beat: the next
    challenger the gate passes is promoted and signed, whatever the unsigned champion's tag claims."""
    monkeypatch.setenv(GATE_KEY_ENV, "k" * 64)
    registry.set_model_version_tag("sherlock", "1", "eval.acc", "100")  # champion (the fixture's), unsigned
    challenger = register(registry, checkpoint, {"eval.acc": "40"})
    decision = tracking.gate_champion("sherlock", challenger, "acc", PIPELINE_RUN)
    assert decision["promoted"] and decision["champion_version"] is None
    assert deploy(tmp_path)["version"] == str(challenger)
