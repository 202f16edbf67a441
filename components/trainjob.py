"""A training step as a Kubeflow Trainer v2 TrainJob: submitted with the Kubeflow SDK's ``TrainerClient``,
its logs streamed, waited for, failed with the job's conditions.

One trainer definition (:func:`custom_trainer`: a ``CustomTrainer`` whose function, :func:`trainjob_rank`,
runs the stage on every rank) serves both of the SDK's backends that run Python functions:

- ``kubernetes``: a TrainJob against the ``sherlock-torch`` ClusterTrainingRuntime (``manifests/trainer/``,
  the chart), in the project image, on ``num_nodes`` nodes × the step's GPUs, with the step's resources,
  node selector, tolerations, volumes and secret-backed environment (:func:`trainjob_options`);
- ``local``: ``LocalProcessBackend`` (torchrun here, in a virtual environment it builds per job; the
  project is pip-installed into it from ``packages``) — how the tests run this path without a cluster.

The stage's config travels base64-encoded: the runtime writes the function and its call into a file
through an unquoted shell here-document, which would expand ``$(…)`` in a run parameter.
"""

from __future__ import annotations

import base64
import json
import signal
import threading
from dataclasses import dataclass

from sherlock.config import ConfigError, help_field, load_config

RUNTIME = "sherlock-torch"  # the ClusterTrainingRuntime of manifests/trainer/ and the chart
LOCAL_RUNTIME = "torch-distributed"  # the one runtime of the SDK's LocalProcessBackend
CONTAINER = "node"  # the trainer container of a torch runtime (the SDK patches and reads this one)
TERMINAL = {"Complete", "Failed"}


@dataclass(kw_only=True)
class TrainJobSettings:
    """Where a training step's TrainJob runs (compiled into the pipeline from its cluster options)."""

    backend: str = help_field("kubernetes", "kubernetes (a TrainJob on the cluster) or local (LocalProcessBackend: "
                                            "torchrun on this machine)")
    runtime: str = help_field(RUNTIME, "the ClusterTrainingRuntime (kubernetes)")
    namespace: str | None = help_field(None, "namespace of the TrainJob (default: the step's own)")
    num_nodes: int = help_field(1, "nodes of the TrainJob; each runs one rank per GPU")
    image: str | None = help_field(None, "the trainer image (default: the runtime's)")
    resources: dict = help_field(default_factory=dict, help="resources per node besides the GPUs (cpu, memory)")
    accelerator: str = help_field("nvidia.com/gpu", "resource name of the GPUs")
    node_selector: dict = help_field(default_factory=dict, help="node selector of the trainer pods")
    tolerations: list = help_field(default_factory=list, help="tolerations of the trainer pods (Kubernetes objects)")
    volumes: list = help_field(default_factory=list, help="volumes of the trainer pods (Kubernetes objects)")
    volume_mounts: list = help_field(default_factory=list, help="their mounts in the trainer container")
    env: list = help_field(default_factory=list, help="environment of the trainer container (EnvVar objects)")
    labels: dict = help_field(default_factory=dict, help="labels of the trainer pods (NetworkPolicies admit by them)")
    service_account: str | None = help_field(None, "service account of the trainer pods")
    packages: list = help_field(default_factory=list, help="local: what to pip-install into the job's environment")
    local_env: dict = help_field(default_factory=dict, help="local: the job's whole environment (no other is passed)")
    timeout_s: int = help_field(7 * 24 * 3600, "give up waiting (and delete the job) after this long")
    poll_s: int = help_field(15, "seconds between status checks")

    def __post_init__(self):
        if self.backend not in ("kubernetes", "local"):
            raise ConfigError(f"TrainJob backend must be kubernetes or local, got {self.backend!r}")
        if self.num_nodes < 1:
            raise ConfigError(f"num_nodes must be at least 1, got {self.num_nodes}")


def trainjob_rank(job) -> None:
    """One rank of the TrainJob (torchrun set RANK, WORLD_SIZE, LOCAL_RANK): run the encoded stage.

    The Kubernetes backend calls it as ``trainjob_rank(job=…)``, the local backend with the dict of
    arguments (SDK 0.5.0). The SDK ships this function's source alone: it imports what it needs.
    """
    import base64
    import json

    from components.trainjob import run_rank

    if isinstance(job, dict):
        job = job["job"]
    run_rank(**json.loads(base64.b64decode(job)))


def run_rank(name: str, config: dict, pipeline_run_id: str | None) -> None:
    """Run stage ``name`` with ``config`` (all its fields) on this rank."""
    from sherlock.stages.registry import stage
    from sherlock.stages.runner import run_stage

    run_stage(name, load_config(stage(name).config, overrides=config), pipeline_run_id)


def encode_job(stage: str, config: dict, pipeline_run_id: str | None) -> str:
    """The arguments of :func:`run_rank`, as base64 of JSON."""
    return base64.b64encode(json.dumps({"name": stage, "config": config, "pipeline_run_id": pipeline_run_id},
                                       sort_keys=True).encode()).decode()


def custom_trainer(settings: TrainJobSettings, job: str, gpus_per_node: int):
    """The ``CustomTrainer`` of a step: :func:`trainjob_rank` on ``num_nodes`` × ``gpus_per_node`` ranks."""
    from kubeflow.trainer import CustomTrainer

    if settings.backend == "local":  # torchrun's own environment variable sets the ranks of the one node
        env = {"PET_NPROC_PER_NODE": str(gpus_per_node)} | settings.local_env
        return CustomTrainer(func=trainjob_rank, func_args={"job": job}, packages_to_install=settings.packages,
                             env=env)
    resources = dict(settings.resources) | ({settings.accelerator: str(gpus_per_node)} if gpus_per_node else {})
    return CustomTrainer(func=trainjob_rank, func_args={"job": job}, image=settings.image,
                         num_nodes=settings.num_nodes, resources_per_node=resources)


def trainjob_options(settings: TrainJobSettings, labels: dict[str, str]) -> list:
    """The SDK options of a Kubernetes TrainJob: its labels and one runtime patch that places the trainer
    pods (node selector, tolerations, service account), mounts their volumes and sets their environment.
    """
    from kubeflow.trainer.options.kubernetes import (
        ContainerPatch,
        JobSetSpecPatch,
        JobSetTemplatePatch,
        JobSpecPatch,
        JobTemplatePatch,
        Labels,
        PodSpecPatch,
        PodTemplatePatch,
        ReplicatedJobPatch,
        RuntimePatch,
        TrainingRuntimeSpecPatch,
    )

    container = ContainerPatch(name=CONTAINER, env=settings.env or None, volume_mounts=settings.volume_mounts or None)
    pod = PodTemplatePatch(metadata={"labels": settings.labels} if settings.labels else None, spec=PodSpecPatch(
        service_account_name=settings.service_account, volumes=settings.volumes or None,
        node_selector=settings.node_selector or None, tolerations=settings.tolerations or None,
        containers=[container]))
    node = ReplicatedJobPatch(name=CONTAINER, template=JobTemplatePatch(spec=JobSpecPatch(template=pod)))
    return [Labels(labels), RuntimePatch(training_runtime_spec=TrainingRuntimeSpecPatch(
        template=JobSetTemplatePatch(spec=JobSetSpecPatch(replicated_jobs=[node]))))]


def trainer_client(settings: TrainJobSettings):
    """The Kubeflow SDK's ``TrainerClient`` for ``settings``' backend (the cluster, or local processes)."""
    from kubeflow.trainer import KubernetesBackendConfig, LocalProcessBackendConfig, TrainerClient

    if settings.backend == "local":
        return TrainerClient(backend_config=LocalProcessBackendConfig())
    return TrainerClient(backend_config=KubernetesBackendConfig(namespace=settings.namespace))


def failure(client, name: str) -> str:
    """Why TrainJob ``name`` failed: its conditions on a cluster, the end of its log on the local backend."""
    from kubeflow.trainer.backends.kubernetes.backend import KubernetesBackend
    from kubeflow.trainer.constants import constants

    backend = client.backend
    if isinstance(backend, KubernetesBackend):
        job = backend.custom_api.get_namespaced_custom_object(
            constants.GROUP, constants.VERSION, backend.namespace, constants.TRAINJOB_PLURAL, name)
        conditions = (job.get("status") or {}).get("conditions") or []
        return "; ".join(f"{c.get('type')}={c.get('status')} {c.get('reason', '')}: {c.get('message', '')}"
                         for c in conditions) or "no conditions"
    return "\n".join(list(client.get_job_logs(name))[-20:])


def submit_trainjob(client, settings: TrainJobSettings, stage: str, config: dict, pipeline_run_id: str | None,
                    gpus_per_node: int, labels: dict[str, str]) -> str:
    """Create the TrainJob of one step (``stage`` with ``config``, all its fields); returns its name."""
    local = settings.backend == "local"
    name = client.train(runtime=LOCAL_RUNTIME if local else settings.runtime,
                        trainer=custom_trainer(settings, encode_job(stage, config, pipeline_run_id), gpus_per_node),
                        options=None if local else trainjob_options(settings, labels))
    print(f"TrainJob {name}: {stage} on {settings.num_nodes} node(s) x {gpus_per_node} rank(s)", flush=True)
    return name


class Stopped(Exception):
    """The step was told to stop (SIGTERM: a cancelled run, an evicted pod)."""


def _stop(signum, frame):
    raise Stopped(f"signal {signum}")


def follow_trainjob(client, settings: TrainJobSettings, name: str) -> None:
    """Stream rank 0's log of TrainJob ``name`` and wait for it to end.

    Raises ``RuntimeError`` with the job's conditions when it fails; deletes the job and raises when it
    does not end within ``timeout_s`` (``TimeoutError``) or the step is stopped (:class:`Stopped`, on
    SIGTERM: a cancelled pipeline run leaves no TrainJob holding GPUs).
    """
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _stop) if main else None
    try:
        client.wait_for_job_status(name, status={"Running"} | TERMINAL, timeout=settings.timeout_s,
                                   polling_interval=settings.poll_s)
        for line in client.get_job_logs(name, follow=True):
            if settings.backend != "local":  # the local backend (SDK 0.5.0) prints what it follows itself
                print(line, flush=True)
        job = client.wait_for_job_status(name, status=TERMINAL, timeout=settings.timeout_s,
                                         polling_interval=settings.poll_s)
    except (TimeoutError, Stopped):
        client.delete_job(name)
        print(f"TrainJob {name} deleted", flush=True)
        raise
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
    if job.status == "Failed":
        raise RuntimeError(f"TrainJob {name} failed: {failure(client, name)}")


def run_trainjob(settings: dict, stage: str, config: dict, pipeline_run_id: str | None, gpus_per_node: int,
                 labels: dict[str, str]) -> str:
    """Run one step as a TrainJob (``settings``: :class:`TrainJobSettings` fields) and wait; returns its name."""
    settings = load_config(TrainJobSettings, overrides=settings)
    client = trainer_client(settings)
    name = submit_trainjob(client, settings, stage, config, pipeline_run_id, gpus_per_node, labels)
    follow_trainjob(client, settings, name)
    return name
