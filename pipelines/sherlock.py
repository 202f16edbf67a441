"""The Sherlock pipeline (KFP v2): sample → R0 → Y^l → Sherlock-SFT → offline preferences → offline
training → K online iterations → evaluate every checkpoint → register each → gate the champion →
deploy it to KServe when this run promoted one.

Compile (offline): ``python -m pipelines.sherlock --output pipelines/sherlock.yaml``. K and the
cluster settings (accelerator, node selector, tolerations, volumes, secrets) are fixed at compile
time (KFP v2 has no recursion: the online iterations are unrolled); everything else is a run
parameter. The default settings are the paper's (``configs/paper/*.yaml``).
"""

import argparse
from dataclasses import dataclass
from pathlib import Path

import yaml
from kfp import compiler, dsl, kubernetes

from components import (build_preferences, deploy, evaluate, online_iteration, prepare_inputs, register_and_gate,
                        sample_data, sample_rejected, sft, train_preferences)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PIPELINE_FILE = Path(__file__).with_suffix(".yaml")
LOSS_KEYS = ("sc_beta", "dpo_beta", "alpha", "dynamic_beta")
S3_ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
POD_LABELS = ("sherlock.dev/s3-client", "sherlock.dev/mlflow-client")


def preset(name: str, directory: str = "paper") -> dict:
    """A stage preset from ``configs/<directory>/<name>.yaml`` as a dict of config fields."""
    return yaml.safe_load((CONFIGS / directory / f"{name}.yaml").read_text())


def split_loss(settings: dict) -> tuple[dict, dict]:
    """``(settings without the loss keys, the loss keys)``: β/α are one pipeline parameter."""
    return ({k: v for k, v in settings.items() if k not in LOSS_KEYS},
            {k: v for k, v in settings.items() if k in LOSS_KEYS})


@dataclass
class ClusterOptions:
    """Where the steps run on Kubernetes (ignored by kfp.local)."""

    accelerator: str = "nvidia.com/gpu"
    node_selector: tuple[str, str] = ("nvidia.com/gpu.present", "true")
    toleration_key: str = "nvidia.com/gpu"
    gpu_cpu: str = "8"
    gpu_memory: str = "64Gi"
    cpu_cpu: str = "2"
    cpu_memory: str = "8Gi"
    shm_size: str = "16Gi"
    cache_size: str = "200Gi"  # ephemeral volume for downloaded checkpoints and data (SHERLOCK_CACHE)
    checkpoint_pvc: "str | None" = None  # mount this PVC at /checkpoints (then output_root=/checkpoints/…)
    s3_secret: str = "sherlock-s3"  # keys AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
    mlflow_secret: str = "sherlock-mlflow"  # key MLFLOW_TRACKING_URI (optional MLFLOW_TRACKING_USERNAME/PASSWORD)


def with_platform(task: dsl.PipelineTask, options: ClusterOptions, gpus=None, retries: int = 1) -> dsl.PipelineTask:
    """Resources, scheduling, volumes and secret-backed credentials of one step."""
    kubernetes.use_secret_as_env(task, options.s3_secret, {key: key for key in S3_ENV})
    kubernetes.use_secret_as_env(task, options.mlflow_secret, {"MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI"})
    kubernetes.use_secret_as_env(task, options.mlflow_secret, {"MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
                                                               "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD"},
                                 optional=True)
    for label in POD_LABELS:  # the NetworkPolicies of manifests/ admit these pods to MinIO and MLflow
        kubernetes.add_pod_label(task, label, "true")
    task.set_retry(num_retries=retries, backoff_duration="60s", backoff_factor=2.0)
    if gpus is None:
        return task.set_cpu_request(options.cpu_cpu).set_memory_request(options.cpu_memory)
    task.set_accelerator_type(options.accelerator).set_accelerator_limit(gpus)
    task.set_cpu_request(options.gpu_cpu).set_memory_request(options.gpu_memory)
    kubernetes.add_node_selector(task, *options.node_selector)
    kubernetes.add_toleration(task, key=options.toleration_key, operator="Exists", effect="NoSchedule")
    kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                               size_limit=options.shm_size)
    kubernetes.add_ephemeral_volume(task, volume_name="cache", mount_path="/cache", access_modes=["ReadWriteOnce"],
                                    size=options.cache_size)
    task.set_env_variable("SHERLOCK_CACHE", "/cache")
    if options.checkpoint_pvc:
        kubernetes.mount_pvc(task, pvc_name=options.checkpoint_pvc, mount_path="/checkpoints")
    return task


def build_pipeline(online_iterations: int = 2, options: ClusterOptions | None = None):
    """The pipeline function with K = ``online_iterations`` unrolled and ``options`` applied."""
    options = options or ClusterOptions()
    offline_settings, offline_loss = split_loss(preset("offline"))
    online_settings, _ = split_loss(preset("online"))

    @dsl.pipeline(name="sherlock", description=__doc__.splitlines()[0])
    def sherlock(
        base_model: str = "embedded",
        train_data: str = "embedded",
        benchmarks: str = "embedded",
        output_root: str = "s3://sherlock/runs",
        subset_sizes: str = "D_A=10000,D_B=10000,D_U=5000",
        seed: int = 0,
        r0_settings: dict = preset("r0"),
        rejected_settings: dict = preset("sample_rejected"),
        sherlock_sft_settings: dict = preset("sherlock_sft"),
        preference_data_settings: dict = preset("preferences"),
        offline_settings: dict = offline_settings,
        online_settings: dict = online_settings,
        loss_settings: dict = offline_loss,
        eval_settings: dict = preset("evaluate"),
        model_name: str = "sherlock",
        selection_metric: str = "llava_cot/round_1",
        promotion_margin: float = 0.0,
        deploy_settings: dict = {},
        gpus: int = 1,
    ):
        run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
        common = {"output_root": output_root, "pipeline_run_id": run_id}

        def gpu(task, name):
            return with_platform(task.set_display_name(name), options, gpus).set_caching_options(True)

        inputs = with_platform(prepare_inputs(base_model=base_model, train_data=train_data, benchmarks=benchmarks,
                                              seed=seed, **common).set_display_name("prepare inputs"),
                               options, retries=3).set_caching_options(True)
        base = inputs.outputs["base_model"]
        subsets = with_platform(sample_data(data=inputs.outputs["train_data"], sizes=subset_sizes, seed=seed,
                                            **common).set_display_name("sample D_A, D_B, D_U"),
                                options, retries=3).set_caching_options(True)
        d_a, d_b, d_u = (subsets.outputs[name] for name in ("d_a", "d_b", "d_u"))
        r0 = gpu(sft(name="r0", model=base, data=d_a, rejected="", settings=r0_settings, **common), "R0 (SFT on D_A)")
        rejected = gpu(sample_rejected(model=r0.output, data=d_b, settings=rejected_settings, **common),
                       "sample Y^l (R0 on D_B)")
        sherlock_sft = gpu(sft(name="sherlock-sft", model=base, data=d_b, rejected=rejected.output,
                               settings=sherlock_sft_settings, **common), "Sherlock-SFT")
        pairs = gpu(build_preferences(model=sherlock_sft.output, data=d_a, settings=preference_data_settings,
                                      **common), "offline preference pairs")
        offline = gpu(train_preferences(model=sherlock_sft.output, data=pairs.output,
                                        settings=offline_settings, loss=loss_settings, **common),
                      "Sherlock offline training")
        checkpoints = [("sherlock-sft", sherlock_sft), ("offline", offline)]
        model = offline
        for k in range(1, online_iterations + 1):
            model = gpu(online_iteration(model=model.output, data=d_u, iteration=k,
                                         settings=online_settings, loss=loss_settings, **common),
                        f"online iteration {k}")
            checkpoints.append((f"online-{k}", model))
        previous = None
        for name, trained in checkpoints:
            scores = gpu(evaluate(name=name, model=trained.output, benchmarks=inputs.outputs["benchmarks"],
                                  settings=eval_settings,
                                  **common), f"evaluate {name}")
            # one version at a time, in checkpoint order: each gate sees the champion the previous one left
            gate = with_platform(register_and_gate(
                checkpoint=trained.output, evaluation=scores.outputs["Output"], model_name=model_name,
                metric=selection_metric, margin=promotion_margin, pipeline_run_id=run_id,
                promoted_before=False if previous is None else previous.outputs["Output"]), options, retries=3)
            gate.set_display_name(f"register {name}").set_caching_options(False)
            previous = gate
        with dsl.If(previous.outputs["Output"] == True, name="this run promoted a champion"):  # noqa: E712
            with_platform(deploy(model_name=model_name, settings=deploy_settings, **common), options,
                          retries=3).set_display_name("deploy champion to KServe").set_caching_options(False)

    return sherlock


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="compile the Sherlock pipeline")
    parser.add_argument("--output", type=Path, default=PIPELINE_FILE)
    parser.add_argument("--online-iterations", type=int, default=2, help="K, unrolled at compile time")
    parser.add_argument("--accelerator", default=ClusterOptions.accelerator, help="resource name of the GPUs")
    parser.add_argument("--node-selector", default="=".join(ClusterOptions.node_selector), help="LABEL=VALUE")
    parser.add_argument("--toleration-key", default=ClusterOptions.toleration_key)
    parser.add_argument("--checkpoint-pvc", default=None, help="PVC mounted at /checkpoints on GPU steps")
    args = parser.parse_args(argv)
    options = ClusterOptions(accelerator=args.accelerator, node_selector=tuple(args.node_selector.split("=", 1)),
                             toleration_key=args.toleration_key, checkpoint_pvc=args.checkpoint_pvc)
    compiler.Compiler().compile(build_pipeline(args.online_iterations, options), str(args.output))
    print(args.output)


if __name__ == "__main__":
    main()
