"""What the recipe pipelines share: presets, cluster options, the input steps, the tail of
evaluation → registration → champion gate → KServe deployment, and the compile command line.

The Sherlock, SCL, STIC and Octopus pipelines (``pipelines/{sherlock,scl,stic,octopus}.py``) differ only in the
training steps between the sampled subsets and the checkpoints they hand to :func:`evaluate_and_deploy`.
"""

import argparse
import inspect
from dataclasses import dataclass
from pathlib import Path

from kfp import compiler, dsl, kubernetes

from components import component
from components.deploy import deploy
from components.evaluate import evaluate
from components.images import IMAGE
from components.prepare_inputs import prepare_inputs
from components.register_and_gate import register_and_gate
from components.sample import sample
from components.trainjob import RUNTIME
from sherlock.config import ConfigError, GPUPlacement, add_config_arguments, config_from_args, help_field
from sherlock.gate import GATE_KEY_ENV
from sherlock.serving.deploy import DEPLOYER_CREDENTIALS
from sherlock.stages.registry import stage

# The oldest Kubeflow Pipelines backend that runs the compiled YAML (README; checked field by field in
# tests/pipelines/test_pipeline.py): its driver ignores platform-spec fields it does not know
# (kubeflow/pipelines#11662) and resolves a run parameter in a resource limit (#11501: gpus).
MIN_KFP_BACKEND = "2.5.0"
S3_ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
S3_CA_DIR = "/etc/sherlock-s3-ca"  # the mounted s3_ca_configmap (manifests/overlays/s3-tls, the chart)
S3_CA_BUNDLE = f"{S3_CA_DIR}/cabundle.crt"  # its AWS_CA_BUNDLE (cabundle.crt: KServe's key name)
MLFLOW_ENV, MLFLOW_OPTIONAL_ENV = ("MLFLOW_TRACKING_URI",), ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
POD_LABELS = ("sherlock.dev/s3-client", "sherlock.dev/mlflow-client")
TRAINJOB_LABEL = "sherlock.dev/trainjob"  # a TrainJob's pods admit each other (manifests/: sherlock-trainjob-peers)
STEP_LABEL = "sherlock.dev/pipeline-step"  # the chart's workload egress policy selects the steps' pods by it


def settings_parameter(preset_name: str) -> str:
    """The pipeline parameter of a preset: ``sft.r0`` → ``sft_r0_settings``."""
    return preset_name.replace(".", "_").replace("-", "_") + "_settings"


@dataclass(kw_only=True)
class ClusterOptions(GPUPlacement):
    """Where the steps run on Kubernetes (fixed at compile time; ignored by kfp.local)."""

    gpu_cpu: str = help_field("8", "CPU request of a GPU step")
    gpu_memory: str = help_field("64Gi", "memory request and limit of a GPU step")
    cpu_cpu: str = help_field("2", "CPU request of a CPU step")
    cpu_memory: str = help_field("8Gi", "memory request and limit of a CPU step")
    shm_size: str = help_field("16Gi", "size of /dev/shm (memory) on GPU steps")
    cache_size: str = help_field("400Gi", "ephemeral /cache (SHERLOCK_CACHE) of a training step: the starting and "
                                          "trained checkpoints, the data and two saved checkpoints (11B, ZeRO-3, "
                                          "full fine-tuning: ~150 GB each with the optimiser state)")
    generation_cache_size: str = help_field("64Gi", "ephemeral /cache of a generation or evaluation step: one "
                                                    "checkpoint (11B in bf16: 21 GB) and its data")
    checkpoint_pvc: str | None = help_field(None, "PVC mounted at /checkpoints on GPU steps "
                                                  "(then output_root=/checkpoints/…)")
    s3_secret: str = help_field("sherlock-s3", "the steps' S3 identity: Secret with AWS_ENDPOINT_URL, "
                                               "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY")
    s3_ca_configmap: str | None = help_field(None, "ConfigMap whose cabundle.crt is the S3 endpoint's CA (the "
                                                   "store with TLS, a private CA): mounted on every step as "
                                                   "AWS_CA_BUNDLE")
    mlflow_secret: str = help_field("sherlock-mlflow", "Secret with MLFLOW_TRACKING_URI (optional "
                                                       "MLFLOW_TRACKING_USERNAME/PASSWORD)")
    deployer_secret: str = help_field("sherlock-deployer-token", "token Secret of the ServiceAccount that may write "
                                                                 "InferenceServices, mounted into the deploy step "
                                                                 "alone ('': the run's own ServiceAccount deploys)")
    gate_secret: str = help_field("sherlock-gate", "Secret whose SHERLOCK_GATE_KEY the gate signs promoted versions "
                                                   "with and deploy checks, mounted into those steps alone ('': "
                                                   "neither signs nor checks; deploy checks provenance only)")
    trainer: str = help_field("in-pod", "in-pod: a training step runs its ranks in its own pod; trainjob: it submits "
                                        "a Kubeflow Trainer TrainJob (num_nodes × gpus ranks) and waits for it")
    num_nodes: int = help_field(1, "nodes of a training step's TrainJob (--trainer trainjob; an online iteration "
                                   "runs on one)")
    trainjob_runtime: str = help_field(RUNTIME, "the ClusterTrainingRuntime of the TrainJobs (manifests/trainer/)")
    trainjob_service_account: str = help_field("sherlock-trainjob", "service account of the TrainJobs' pods "
                                                                    "(no Kubernetes API access)")
    trainjob_s3_secret: str = help_field("sherlock-s3-trainjob", "the TrainJobs' S3 identity (keys as in s3_secret): "
                                                                 "it may write runs/ but not registered checkpoints")

    def __post_init__(self):
        if self.trainer not in ("in-pod", "trainjob"):
            raise ConfigError(f"trainer must be in-pod or trainjob, got {self.trainer!r}")
        if self.num_nodes < 1 or self.num_nodes > 1 and self.trainer != "trainjob":
            raise ConfigError(f"num_nodes={self.num_nodes} needs --trainer trainjob and must be at least 1")

    def trainjob(self, num_nodes: int) -> dict:
        """The :class:`components.trainjob.TrainJobSettings` of a training step: the resources, placement,
        volumes, credentials and pod labels a GPU step gets from :func:`with_platform`, for its TrainJob.
        """
        env = [{"name": key, "valueFrom": {"secretKeyRef": {"name": self.trainjob_s3_secret, "key": key}}}
               for key in S3_ENV]
        env += [{"name": key, "valueFrom": {"secretKeyRef": {"name": self.mlflow_secret, "key": key,
                                                            "optional": key in MLFLOW_OPTIONAL_ENV}}}
                for key in (*MLFLOW_ENV, *MLFLOW_OPTIONAL_ENV)]
        env.append({"name": "SHERLOCK_CACHE", "value": "/cache"})
        claim = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": self.cache_size}}}
        volumes = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": self.shm_size}},
                   {"name": "cache", "ephemeral": {"volumeClaimTemplate": {"spec": claim}}}]
        mounts = [{"name": "dshm", "mountPath": "/dev/shm"}, {"name": "cache", "mountPath": "/cache"}]
        if self.checkpoint_pvc:
            volumes.append({"name": "checkpoints", "persistentVolumeClaim": {"claimName": self.checkpoint_pvc}})
            mounts.append({"name": "checkpoints", "mountPath": "/checkpoints"})
        if self.s3_ca_configmap:
            volumes.append({"name": "s3-ca", "configMap": {"name": self.s3_ca_configmap}})
            mounts.append({"name": "s3-ca", "mountPath": S3_CA_DIR, "readOnly": True})
            env.append({"name": "AWS_CA_BUNDLE", "value": S3_CA_BUNDLE})
        return {"runtime": self.trainjob_runtime, "num_nodes": num_nodes, "image": IMAGE,
                "resources": {"cpu": self.gpu_cpu, "memory": self.gpu_memory}, "accelerator": self.accelerator,
                "node_selector": self.selector(), "volumes": volumes, "volume_mounts": mounts, "env": env,
                "tolerations": [{"key": key, "operator": "Exists", "effect": "NoSchedule"}
                                for key in self.toleration_keys()],
                "labels": {label: "true" for label in (*POD_LABELS, TRAINJOB_LABEL)},
                "service_account": self.trainjob_service_account}


def with_platform(task: dsl.PipelineTask, options: ClusterOptions, gpus=None, retries: int = 1,
                  trains: bool = False) -> dsl.PipelineTask:
    """Resources, scheduling, volumes and secret-backed credentials of one step (a GPU step when ``gpus``
    is set; ``trains``: its ``/cache`` holds checkpoints).
    """
    kubernetes.use_secret_as_env(task, options.s3_secret, {key: key for key in S3_ENV})
    kubernetes.use_secret_as_env(task, options.mlflow_secret, {key: key for key in MLFLOW_ENV})
    kubernetes.use_secret_as_env(task, options.mlflow_secret, {key: key for key in MLFLOW_OPTIONAL_ENV},
                                 optional=True)
    if options.s3_ca_configmap:  # trust the S3 endpoint's CA (AWS_CA_BUNDLE: sherlock.storage, MLflow's boto3)
        kubernetes.use_config_map_as_volume(task, options.s3_ca_configmap, mount_path=S3_CA_DIR)
        task.set_env_variable("AWS_CA_BUNDLE", S3_CA_BUNDLE)
    for label in (*POD_LABELS, STEP_LABEL):  # the NetworkPolicies of manifests/ admit these pods to S3 and MLflow
        kubernetes.add_pod_label(task, label, "true")
    task.set_retry(num_retries=retries, backoff_duration="60s", backoff_factor=2.0)
    if gpus is None:
        return task.set_cpu_request(options.cpu_cpu).set_memory_request(options.cpu_memory).set_memory_limit(
            options.cpu_memory)
    task.set_accelerator_type(options.accelerator).set_accelerator_limit(gpus)
    task.set_cpu_request(options.gpu_cpu).set_memory_request(options.gpu_memory).set_memory_limit(options.gpu_memory)
    for label, value in options.selector().items():
        kubernetes.add_node_selector(task, label, value)
    for key in options.toleration_keys():
        kubernetes.add_toleration(task, key=key, operator="Exists", effect="NoSchedule")
    kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                               size_limit=options.shm_size)
    kubernetes.add_ephemeral_volume(task, volume_name="cache", mount_path="/cache", access_modes=["ReadWriteOnce"],
                                    size=options.cache_size if trains else options.generation_cache_size)
    task.set_env_variable("SHERLOCK_CACHE", "/cache")
    if options.checkpoint_pvc:
        kubernetes.mount_pvc(task, pvc_name=options.checkpoint_pvc, mount_path="/checkpoints")
    return task


def gpu_step(options: ClusterOptions, gpus):
    """``step(task, display name, trains)``: a cached GPU step with ``gpus`` accelerators."""
    def step(task: dsl.PipelineTask, name: str, trains: bool = False) -> dsl.PipelineTask:
        return with_platform(task.set_display_name(name), options, gpus, trains=trains).set_caching_options(True)

    return step


def inputs_and_subsets(options: ClusterOptions, base_model, train_data, benchmarks, subset_sizes, seed, common: dict):
    """The two CPU steps every recipe starts with: resolve (or build) the inputs, sample the subsets.

    Returns ``(inputs task, {"D_A": …, "D_B": …, "D_U": …})``; a subset missing from ``subset_sizes``
    has a URI nothing may read.
    """
    inputs = with_platform(prepare_inputs(base_model=base_model, train_data=train_data, benchmarks=benchmarks,
                                          seed=seed, **common).set_display_name("prepare inputs"),
                           options, retries=3).set_caching_options(True)
    subsets = with_platform(sample(data=inputs.outputs["train_data"], sizes=subset_sizes, seed=seed,
                                        **common).set_display_name("sample subsets"),
                            options, retries=3).set_caching_options(True)
    return inputs, {name: subsets.outputs[name.lower()] for name in ("D_A", "D_B", "D_U")}


def component_runner(options: ClusterOptions, gpus, settings: dict, common: dict):
    """The ``run`` callback of :mod:`sherlock.recipes` in a pipeline: each step a cached GPU task of its stage's
    component, with the preset's pipeline parameter ``settings[preset]`` as its settings and one rank per
    GPU (with ``--trainer trainjob``, a training step is a CPU task whose TrainJob has the GPUs); hands on
    the task's output. A stage that runs in one process (:attr:`Stage.multi_rank` false) gets one GPU and rank.
    """
    def run(step: str, preset_name: str, title: str, **inputs):
        stage_record = stage(preset_name.split(".")[0])
        ranks = gpus if stage_record.multi_rank else 1  # a one-process stage gets one GPU
        task = component(stage_record.identifier)
        if "name" in inspect.signature(task.python_func).parameters:
            inputs["name"] = step
        if options.trainer == "trainjob" and stage_record.trains:  # a CPU step that submits and waits
            trainjob = options.trainjob(options.num_nodes if stage_record.multi_node else 1)
            submitted = task(**inputs, settings=settings[preset_name], nproc_per_node=ranks, trainjob=trainjob,
                             **common)
            return with_platform(submitted.set_display_name(title), options).set_caching_options(True).output
        return gpu_step(options, ranks)(task(**inputs, settings=settings[preset_name], nproc_per_node=ranks, **common),
                                        title, stage_record.trains).output

    return run


def evaluate_and_deploy(checkpoints: list, benchmarks, prior_data, options: ClusterOptions, gpus, evaluate_settings,
                        model_name, selection_metric, promotion_margin, deploy_settings, run_id, registry_root,
                        common: dict, checkpoint_settings: dict | None = None, baselines: tuple = ()) -> None:
    """Evaluate each ``(name, checkpoint URI)`` (with the blind prior of ``prior_data``), register it, gate
    champion in order, deploy if promoted. Registered checkpoints are copied under ``registry_root``. A checkpoint
    named in ``checkpoint_settings`` is evaluated with those settings instead of ``evaluate_settings``; each of
    ``baselines`` is evaluated beside them and never registered.
    """
    gpu = gpu_step(options, gpus)

    def evaluated(name: str, checkpoint) -> dsl.PipelineTask:
        settings = (checkpoint_settings or {}).get(name, evaluate_settings)
        return gpu(evaluate(name=name, model=checkpoint, benchmarks=benchmarks, prior_data=prior_data,
                            settings=settings, nproc_per_node=gpus, **common), f"evaluate {name}")

    for name, checkpoint in baselines:
        evaluated(name, checkpoint)
    previous = None
    for name, checkpoint in checkpoints:
        scores = evaluated(name, checkpoint)
        # one version at a time, in checkpoint order: each gate sees the champion the previous one left
        gate = with_platform(register_and_gate(
            checkpoint=checkpoint, evaluation=scores.outputs["Output"], model_name=model_name,
            metric=selection_metric, margin=promotion_margin, pipeline_run_id=run_id, registry_root=registry_root,
            promoted_before=False if previous is None else previous.outputs["Output"]), options, retries=3)
        gate.set_display_name(f"register {name}").set_caching_options(False)
        with_gate_key(gate, options)
        previous = gate
    with dsl.If(previous.outputs["Output"] == True, name="this run promoted a champion"):  # noqa: E712
        deployer = with_platform(deploy(model_name=model_name, settings=deploy_settings, registry_root=registry_root,
                                        **common), options,
                                 retries=3).set_display_name("deploy champion to KServe").set_caching_options(False)
        if options.deployer_secret:  # the only step that may write InferenceServices (manifests/: sherlock-deployer)
            kubernetes.use_secret_as_volume(deployer, secret_name=options.deployer_secret,
                                            mount_path=str(DEPLOYER_CREDENTIALS))
        with_gate_key(deployer, options)


def with_gate_key(task, options: ClusterOptions):
    """The gate's signing key (:data:`sherlock.gate.GATE_KEY_ENV`) for the gate and deploy steps alone:
    every step holds the pipeline's MLflow login, which may move aliases; only these two may sign or check.
    """
    if options.gate_secret:
        kubernetes.use_secret_as_env(task, options.gate_secret, {GATE_KEY_ENV: GATE_KEY_ENV})
    return task


def compile_command(description: str, default_output: Path, build, argv: list[str] | None = None,
                    extra_arguments=None) -> None:
    """``python -m pipelines.<recipe>``: cluster options (+ ``extra_arguments``) → ``build(options, args)``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--output", type=Path, default=default_output)
    add_config_arguments(parser, ClusterOptions)
    if extra_arguments is not None:
        extra_arguments(parser)
    args = parser.parse_args(argv)
    try:
        options = config_from_args(ClusterOptions, args)
        options.selector()  # a malformed node selector fails here, not on the cluster
    except ConfigError as error:
        parser.error(str(error))
    compiler.Compiler().compile(build(options, args), str(args.output))
    print(args.output)


def warm_start_argument(parser: argparse.ArgumentParser) -> None:
    """``--no-warm-start``: start the SCL/STIC recipe from the base model itself (no R0 SFT step)."""
    parser.add_argument("--no-warm-start", dest="warm_start", action="store_false",
                        help="the base model already follows instructions: skip the R0 SFT step on D_A")
