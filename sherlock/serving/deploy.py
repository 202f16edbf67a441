"""Deploy a registered checkpoint as a KServe ``InferenceService`` running ``sherlock serve``.

:func:`inference_service` builds the object with the KServe SDK: a custom predictor container
from the project image, GPU resources, node selector and tolerations, the checkpoint's ``s3://``
URI as ``STORAGE_URI`` (KServe's storage initializer downloads it to ``/mnt/models`` with the
credentials of ``service_account``), readiness and liveness probes, and a non-root, read-only
container. :func:`run_deploy` validates it offline against the generated CRD schema
(:mod:`sherlock.serving.schema`), writes ``inferenceservice.yaml`` and then, with a cluster,
creates the InferenceService or patches it (with ``canary_traffic_percent`` of the traffic on the
new revision), waits until it is Ready at the new generation, and records the endpoint on the
MLflow model version (tags ``serving.*``). Without a cluster only the manifest is written.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

import sherlock
from sherlock.config import ConfigError, GPUPlacement, help_field
from sherlock.storage import StorageError, publish

MANIFEST_FILE = "inferenceservice.yaml"
RESULT_FILE = "deployment.json"
MODEL_DIR = "/mnt/models"  # where KServe's storage initializer puts STORAGE_URI
PORT = 8080
CACHE_DIR = "/cache"  # SHERLOCK_CACHE in the image
MODES = ("auto", "cluster", "manifest")
CLUSTER_SCHEMES = ("s3://", "gs://", "pvc://", "https://", "hf://")  # what the storage initializer can fetch
# where the deploy step finds the deployer's ServiceAccount token Secret (token, ca.crt): a KFP run has one
# ServiceAccount for every step, so the right to write InferenceServices is mounted into this step alone
DEPLOYER_CREDENTIALS = Path("/var/run/secrets/sherlock-deployer")
TOKEN_DIR = "/var/run/secrets/sherlock-serving"  # where the predictor reads its bearer token (token_secret)
TERMINATION_MARGIN_S = 10  # SIGTERM to SIGKILL beyond the server's own drain


class DeployError(RuntimeError):
    """The InferenceService could not be created, patched or made Ready."""


@dataclass(kw_only=True)
class DeployConfig(GPUPlacement):
    """Config of ``sherlock deploy``: the registered model, the InferenceService and its placement."""
    model: str = help_field(help="registered model: models:/NAME@ALIAS or models:/NAME/VERSION")
    output: str = help_field(help="directory (or s3:// prefix) for inferenceservice.yaml and deployment.json",
                             uri="output")
    name: str = help_field("sherlock", help="InferenceService name, also the model name in its URLs")
    namespace: str = help_field("sherlock", help="namespace of the InferenceService")
    mode: str = help_field("auto", help="cluster: create or patch and wait; manifest: only write it; "
                                        "auto: cluster when in a pod or a kubeconfig exists")
    image: str = help_field(sherlock.GPU_IMAGE, help="predictor image (the project image)")
    service_account: str = help_field("sherlock-serving", help="ServiceAccount with the S3 credentials Secret")
    gpus: int = help_field(1, help="GPUs per replica (0: CPU only)")
    cpu: str = help_field("4", help="CPU request")
    memory: str = help_field("32Gi", help="memory request and limit")
    min_replicas: int = help_field(1, help="replicas kept running (0 allows scale to zero)")
    max_replicas: int = help_field(1, help="autoscaling limit")
    canary_traffic_percent: int = help_field(100, help="traffic for the new revision when patching (Serverless)")
    max_batch_size: int = help_field(8, help="requests answered by one generate call")
    batch_wait_ms: float = help_field(10.0, help="how long a batch waits to fill")
    request_timeout_s: float = help_field(300.0, help="a request's deadline; the pod's termination grace "
                                                       "period covers it")
    token_secret: str = help_field("", help="Secret whose key `token` callers must send as a bearer token "
                                            "('' : none; the mesh authenticates callers)")
    load_seconds: int = help_field(600, help="allowed model load time before liveness checks begin")
    timeout_seconds: int = help_field(900, help="how long to wait for Ready")
    poll_seconds: float = help_field(10.0, help="status polling interval while waiting")
    checkpoint_roots: str = help_field("s3://sherlock-models/", help="comma-separated URI prefixes a deployed "
                                                                     "checkpoint must live under (the registered "
                                                                     "checkpoints' root)")

    def __post_init__(self) -> None:
        if not self.model.startswith("models:/"):
            raise ConfigError(f"model must be models:/NAME@ALIAS or models:/NAME/VERSION, got {self.model!r}")
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {self.mode!r}")
        if not 0 < self.canary_traffic_percent <= 100:
            raise ConfigError(f"canary_traffic_percent must be in 1..100, got {self.canary_traffic_percent}")
        if self.gpus < 0 or self.min_replicas < 0 or self.max_replicas < max(self.min_replicas, 1):
            raise ConfigError("need gpus >= 0, min_replicas >= 0 and max_replicas >= max(min_replicas, 1)")
        self.selector()



def inference_service(config: DeployConfig, storage_uri: str, version) -> object:
    """The ``V1beta1InferenceService`` serving ``storage_uri`` (registered as ``version``)."""
    sys.argv = sys.argv[:1]  # kserve parses sys.argv when imported
    from kserve import V1beta1InferenceService, V1beta1InferenceServiceSpec, V1beta1PredictorSpec, constants
    from kubernetes import client

    from sherlock.serving.server import grace_period

    requests = {"cpu": config.cpu, "memory": config.memory}
    limits = {"memory": config.memory}
    if config.gpus:
        requests[config.accelerator] = limits[config.accelerator] = str(config.gpus)
    http = client.V1HTTPGetAction(path=f"/v1/models/{config.name}", port=PORT)
    container = client.V1Container(
        name="kserve-container", image=config.image, command=["sherlock", "serve"],
        args=["--model", MODEL_DIR, "--name", config.name, "--host", "0.0.0.0", "--http-port", str(PORT),
              "--max-batch-size", str(config.max_batch_size), "--batch-wait-ms", str(config.batch_wait_ms),
              "--request-timeout-s", str(config.request_timeout_s)]
        + (["--token-file", f"{TOKEN_DIR}/token"] if config.token_secret else []),
        env=[client.V1EnvVar(name="STORAGE_URI", value=storage_uri),
             client.V1EnvVar(name="HF_HUB_OFFLINE", value="1"), client.V1EnvVar(name="HOME", value="/tmp"),
             client.V1EnvVar(name="SHERLOCK_CACHE", value=CACHE_DIR)],
        ports=[client.V1ContainerPort(container_port=PORT, name="http1", protocol="TCP")],
        resources=client.V1ResourceRequirements(requests=requests, limits=limits),
        # the server listens only once the model is loaded: not ready (and not yet probed for liveness) until then
        readiness_probe=client.V1Probe(http_get=http, period_seconds=5, timeout_seconds=2, failure_threshold=3),
        liveness_probe=client.V1Probe(http_get=client.V1HTTPGetAction(path="/", port=PORT),
                                      initial_delay_seconds=config.load_seconds, period_seconds=15,
                                      timeout_seconds=5, failure_threshold=4),
        security_context=client.V1SecurityContext(
            run_as_non_root=True, run_as_user=1000, allow_privilege_escalation=False, read_only_root_filesystem=True,
            capabilities=client.V1Capabilities(drop=["ALL"]), seccomp_profile=client.V1SeccompProfile(
                type="RuntimeDefault")),
        # a read-only root: every path the server writes is an emptyDir, writable by whatever user the pod runs as
        volume_mounts=[client.V1VolumeMount(name="tmp", mount_path="/tmp"),
                       client.V1VolumeMount(name="cache", mount_path=CACHE_DIR)]
        + ([client.V1VolumeMount(name="token", mount_path=TOKEN_DIR, read_only=True)] if config.token_secret else []))
    predictor = V1beta1PredictorSpec(
        containers=[container], service_account_name=config.service_account,
        node_selector=config.selector() or None,
        tolerations=[client.V1Toleration(key=key, operator="Exists", effect="NoSchedule")
                     for key in config.toleration_keys()] or None,
        volumes=[client.V1Volume(name=name, empty_dir=client.V1EmptyDirVolumeSource()) for name in ("tmp", "cache")]
        + ([client.V1Volume(name="token", secret=client.V1SecretVolumeSource(secret_name=config.token_secret))]
           if config.token_secret else []),
        # SIGTERM to SIGKILL: the server drains for the request deadline (sherlock serve), plus a margin
        termination_grace_period_seconds=grace_period(config.request_timeout_s) + TERMINATION_MARGIN_S,
        min_replicas=config.min_replicas, max_replicas=config.max_replicas)
    metadata = client.V1ObjectMeta(
        name=config.name, namespace=config.namespace,
        labels={"app.kubernetes.io/name": "sherlock", "app.kubernetes.io/component": "predictor",
                "app.kubernetes.io/version": sherlock.__version__},
        annotations={"sherlock.dev/registered-model": f"{version.name}/{version.version}",
                     "sherlock.dev/storage-uri": storage_uri})
    return V1beta1InferenceService(api_version=constants.KSERVE_V1BETA1, kind=constants.KSERVE_KIND_INFERENCESERVICE,
                                   metadata=metadata, spec=V1beta1InferenceServiceSpec(predictor=predictor))


def to_manifest(isvc) -> dict:
    """The object as the API server sees it (camelCase, empty fields dropped)."""
    from kubernetes.client import ApiClient

    return ApiClient().sanitize_for_serialization(isvc)


def cluster_available() -> bool:
    """In a pod with a service account, or a kubeconfig is present."""
    kubeconfig = os.environ.get("KUBECONFIG", str(Path.home() / ".kube" / "config"))
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) or any(
        Path(path).is_file() for path in kubeconfig.split(os.pathsep) if path)


def deployer_kubeconfig(credentials: Path) -> dict | None:
    """A kubeconfig (as a dict) of the deployer's token where its Secret is mounted (``credentials``,
    :data:`DEPLOYER_CREDENTIALS` in the deploy step): the in-cluster API
    server, ``credentials/token`` as the bearer, ``credentials/ca.crt`` to verify it. ``None`` where it is
    not mounted: the kubeconfig, or the pod's own ServiceAccount, as the Kubernetes client finds them.
    """
    if not (credentials / "token").is_file():
        return None
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        raise DeployError(f"the deployer's token is mounted at {credentials}, but KUBERNETES_SERVICE_HOST/PORT "
                          "are not set: not in a pod")
    server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    return {"apiVersion": "v1", "kind": "Config", "current-context": "deployer",
            "clusters": [{"name": "in-cluster", "cluster": {"server": server,
                                                             "certificate-authority": str(credentials / "ca.crt")}}],
            "users": [{"name": "deployer", "user": {"tokenFile": str(credentials / "token")}}],
            "contexts": [{"name": "deployer", "context": {"cluster": "in-cluster", "user": "deployer"}}]}


def kserve_client():
    """The KServe client of the deploy step: as the deployer (:func:`deployer_kubeconfig`) where its
    token is mounted, else from ``KUBECONFIG``, ``~/.kube/config`` or the pod's ServiceAccount.
    """
    from kserve import KServeClient

    deployer = deployer_kubeconfig(DEPLOYER_CREDENTIALS)
    if deployer is not None:
        return KServeClient(config_dict=deployer)
    return KServeClient(config_file=os.environ.get("KUBECONFIG"))


def apply(isvc, config: DeployConfig) -> tuple[str, dict]:
    """Create the InferenceService, or patch it (canary when < 100 %); wait for Ready; ``(action, object)``."""
    from kserve import constants
    from kubernetes.client.rest import ApiException

    kserve = kserve_client()
    try:
        kserve.api_instance.get_namespaced_custom_object(
            constants.KSERVE_GROUP, constants.KSERVE_V1BETA1_VERSION, config.namespace,
            constants.KSERVE_PLURAL_INFERENCESERVICE, config.name)
        exists = True
    except ApiException as error:
        if error.status != 404:
            raise DeployError(f"cannot read InferenceService {config.namespace}/{config.name}: "
                              f"{error.status} {error.reason}") from None
        exists = False
    try:
        if exists:
            isvc.spec.predictor.canary_traffic_percent = config.canary_traffic_percent
            written = kserve.patch(config.name, isvc, namespace=config.namespace)
        else:
            written = kserve.create(isvc, namespace=config.namespace)
        kserve.wait_isvc_ready(config.name, namespace=config.namespace, timeout_seconds=config.timeout_seconds,
                               polling_interval=config.poll_seconds,
                               expected_generation=written["metadata"]["generation"])
        return ("patched" if exists else "created"), kserve.get(config.name, namespace=config.namespace)
    except RuntimeError as error:  # the SDK wraps API errors and timeouts in RuntimeError
        raise DeployError(f"InferenceService {config.namespace}/{config.name}: {str(error)[:2000]}") from None


def run_deploy(config: DeployConfig) -> dict:
    """Deploy (or write the manifest of) the model version ``config.model``; returns what was done."""
    import mlflow
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    from sherlock.gate import GateKeyError
    from sherlock.serving.schema import validate_manifest
    from sherlock.tracking import CheckpointMismatchError, ProvenanceError, check_deployable, verify_checkpoint

    client = mlflow.MlflowClient()
    version = client.get_model_version(*get_model_name_and_version(client, config.model))
    try:
        check_deployable(client, version)  # a pipeline's stage run logged it, and the gate promoted it
    except (ProvenanceError, GateKeyError) as error:
        raise DeployError(f"{config.model}: {error}") from None
    storage_uri = version.tags.get("checkpoint_uri")
    if not storage_uri:
        raise DeployError(f"{config.model} (version {version.version}) has no checkpoint_uri tag: "
                          "register checkpoints with sherlock.tracking.register_checkpoint")
    roots = [root.rstrip("/") + "/" for root in config.checkpoint_roots.split(",") if root.strip()]
    if not any(storage_uri.rstrip("/").startswith(root) for root in roots) or ".." in storage_uri.split("/"):
        raise DeployError(f"version {version.version} names checkpoint {storage_uri!r}, outside the checkpoint roots "
                          f"{roots}: refused before anything is created")
    try:
        verify_checkpoint(version, storage_uri)  # the checkpoint is the one that was evaluated and registered
    except (CheckpointMismatchError, StorageError, FileNotFoundError) as error:
        raise DeployError(f"{config.model}: {error}") from None
    isvc = inference_service(config, storage_uri, version)
    manifest = to_manifest(isvc)
    validate_manifest(manifest)
    mode = config.mode if config.mode != "auto" else ("cluster" if cluster_available() else "manifest")
    result = {"model": config.model, "version": str(version.version), "storage_uri": storage_uri, "mode": mode,
              "inference_service": f"{config.namespace}/{config.name}", "action": "manifest", "url": None,
              "manifest": f"{config.output.rstrip('/')}/{MANIFEST_FILE}"}
    if mode == "cluster":
        if not storage_uri.startswith(CLUSTER_SCHEMES):
            raise DeployError(f"version {version.version} lives at {storage_uri!r}, which a cluster cannot fetch; "
                              f"serve from one of {CLUSTER_SCHEMES}")
        result["action"], applied = apply(isvc, config)
        result["url"] = applied.get("status", {}).get("url")
        result["canary_traffic_percent"] = config.canary_traffic_percent if result["action"] == "patched" else 100
    with tempfile.TemporaryDirectory() as staging:
        (Path(staging) / MANIFEST_FILE).write_text(yaml.safe_dump(manifest, sort_keys=False))
        (Path(staging) / RESULT_FILE).write_text(json.dumps(result, indent=2))
        publish(staging, config.output)
    tags = {"serving.inference_service": result["inference_service"], "serving.manifest": result["manifest"],
            "serving.action": result["action"], "serving.time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if result["url"]:
        tags |= {"serving.url": result["url"], "serving.canary_traffic_percent": str(result["canary_traffic_percent"])}
    for key, value in tags.items():
        client.set_model_version_tag(version.name, version.version, key, value)
    return result
