"""Kubeflow Pipelines (v2) components: one per stage of the three recipes, each a thin typed wrapper.

Every component runs in the project image (kfp and the ``sherlock`` package preinstalled, so
nothing is pip-installed at run time) and calls one function of :mod:`sherlock.pipeline_steps`.
Checkpoints and data sets move between steps as URIs (``s3://`` or a mounted volume) returned as
strings; evaluation emits KFP ``Metrics`` and an ``HTML`` report for the UI.

The images are fixed at compile time: ``SHERLOCK_IMAGE`` (CUDA, GPU steps) and
``SHERLOCK_CPU_IMAGE`` (CPU steps) in the environment of ``python -m pipelines.sherlock``.
"""

import os
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Metrics, Output

import sherlock

IMAGE = os.environ.get("SHERLOCK_IMAGE", sherlock.GPU_IMAGE)
CPU_IMAGE = os.environ.get("SHERLOCK_CPU_IMAGE", sherlock.CPU_IMAGE)
GPU = {"base_image": IMAGE, "install_kfp_package": False}
CPU = {"base_image": CPU_IMAGE, "install_kfp_package": False}


@dsl.component(**CPU)
def prepare_inputs(base_model: str, train_data: str, benchmarks: str, output_root: str, pipeline_run_id: str,
                   seed: int) -> NamedTuple("Inputs", base_model=str, train_data=str, benchmarks=str):
    """Pass the given URIs through, or build the embedded default (synthetic task + tiny VLM)."""
    from sherlock.pipeline_steps import embedded_inputs

    return embedded_inputs(base_model, train_data, benchmarks, output_root, pipeline_run_id, seed=seed)


@dsl.component(**CPU)
def sample_data(data: str, sizes: str, seed: int, output_root: str,
                pipeline_run_id: str) -> NamedTuple("Subsets", d_a=str, d_b=str, d_u=str):
    """Stage I data: disjoint seeded subsets D_A, D_B and the unlabeled pool D_U, with a manifest."""
    from sherlock.pipeline_steps import stage_step
    from sherlock.stages.registry import STAGES

    output = stage_step("sample", "subsets", {"sizes": sizes, "seed": seed, "data_file": "data.jsonl"}, output_root,
                        pipeline_run_id, data=data)
    return tuple(STAGES["sample"].output(output, name) for name in ("D_A", "D_B", "D_U"))


@dsl.component(**GPU)
def sft(name: str, model: str, data: str, rejected: str, settings: dict, output_root: str,
        pipeline_run_id: str) -> str:
    """Stage I: R0 (SFT on D_A) or, with ``rejected`` set, Sherlock-SFT on D_B (Eq. 3)."""
    from sherlock.pipeline_steps import stage_step

    extra = {"rejected": rejected} if rejected else {}
    return stage_step("sft", name, settings, output_root, pipeline_run_id, model=model, data=data, **extra)


@dsl.component(**GPU)
def sample_rejected(model: str, data: str, settings: dict, output_root: str, pipeline_run_id: str) -> str:
    """Stage I: sample Y^l from R0 on D_B; returns the URI of rejected.jsonl."""
    from sherlock.pipeline_steps import stage_step
    from sherlock.stages.registry import STAGES

    output = stage_step("sample-rejected", "rejected", settings, output_root, pipeline_run_id, model=model, data=data)
    return STAGES["sample-rejected"].output(output, "rejected")


@dsl.component(**GPU)
def build_preferences(model: str, data: str, settings: dict, output_root: str, pipeline_run_id: str) -> str:
    """Stage II data: truncate Y^w at step i, perturb the image by ε, continue → Y^l (Alg. 1)."""
    from sherlock.pipeline_steps import stage_step

    return stage_step("build-preferences", "preferences", settings, output_root, pipeline_run_id, model=model,
                      data=data)


@dsl.component(**GPU)
def train_preferences(name: str, model: str, data: str, settings: dict, output_root: str,
                      pipeline_run_id: str) -> str:
    """Stage II: L_SC + α·L_DPO with the dynamic per-sample β (Eqs. 4–7); β and α are fields of ``settings``.

    The SCL and STIC-stage-1 steps are the same stage with DPO settings (static β, an SFT term).
    """
    from sherlock.pipeline_steps import stage_step

    return stage_step("train-preferences", name, settings, output_root, pipeline_run_id, model=model, data=data)


@dsl.component(**GPU)
def scl_pairs(model: str, data: str, settings: dict, output_root: str, pipeline_run_id: str) -> str:
    """SCL data: answer, review in the same chat, keep (−,+) and (+,−) outcomes as DPO pairs."""
    from sherlock.pipeline_steps import stage_step

    return stage_step("scl-pairs", "scl-pairs", settings, output_root, pipeline_run_id, model=model, data=data)


@dsl.component(**GPU)
def stic_pairs(model: str, data: str, settings: dict, output_root: str, pipeline_run_id: str) -> str:
    """STIC stage 1 data: a described clean image preferred over a hallucinated or corrupted-image one."""
    from sherlock.pipeline_steps import stage_step

    return stage_step("stic-pairs", "stic-pairs", settings, output_root, pipeline_run_id, model=model, data=data)


@dsl.component(**GPU)
def stic_describe(model: str, data: str, settings: dict, output_root: str, pipeline_run_id: str) -> str:
    """STIC stage 2 data: the stage-1 model's image descriptions put in front of the SFT questions."""
    from sherlock.pipeline_steps import stage_step

    return stage_step("stic-describe", "stic-described", settings, output_root, pipeline_run_id, model=model,
                      data=data)


@dsl.component(**GPU)
def online_iteration(model: str, data: str, iteration: int, settings: dict, output_root: str,
                     pipeline_run_id: str) -> str:
    """Stage III iteration k: label-free pairs from π_{k−1}'s self-consistency, then train π_k."""
    from sherlock.pipeline_steps import stage_step
    from sherlock.stages.registry import STAGES

    output = stage_step("online", f"online-{iteration}", settings | {"iteration": iteration, "iterations": 1},
                        output_root, pipeline_run_id, model=model, data=data)
    return STAGES["online"].output(output, "model", iteration=iteration)


@dsl.component(**GPU)
def evaluate(name: str, model: str, benchmarks: str, prior_data: str, settings: dict, output_root: str,
             pipeline_run_id: str, metrics: Output[Metrics], report: Output[HTML]) -> str:
    """Direct accuracy, accuracy after each self-correction round and the baselines (blank image, the
    blind prior of ``prior_data``), with a report for the KFP UI."""
    from sherlock.pipeline_steps import evaluation_report, stage_step

    output = stage_step("evaluate", f"eval-{name}", settings, output_root, pipeline_run_id, model=model,
                        benchmarks=benchmarks, prior_data=prior_data)
    for key, value in evaluation_report(output, name, model, report.path).items():
        metrics.log_metric(key, value)
    return output


@dsl.component(**CPU)
def register_and_gate(checkpoint: str, evaluation: str, model_name: str, metric: str, margin: float,
                      pipeline_run_id: str, promoted_before: bool, gate: Output[Metrics]) -> bool:
    """Register the checkpoint in MLflow (alias challenger); move champion only if it wins by ``margin``.

    Returns whether this or an earlier gate of the run (``promoted_before``) moved champion; the
    decision is on the model version's ``gate.decision`` tag and in the ``gate`` metrics.
    """
    from sherlock.pipeline_steps import register_step

    decision = register_step(checkpoint, evaluation, model_name, metric, margin, pipeline_run_id)
    for key in ("challenger_score", "champion_score"):
        if decision[key] is not None:
            gate.log_metric(key, decision[key])
    gate.log_metric("promoted", float(decision["promoted"]))
    return promoted_before or decision["promoted"]


@dsl.component(**CPU)
def deploy(model_name: str, settings: dict, output_root: str, pipeline_run_id: str) -> str:
    """Serve ``models:/<model_name>@champion`` as a KServe InferenceService (without a cluster: its manifest)."""
    import json

    from sherlock.pipeline_steps import deploy_step

    return json.dumps(deploy_step(model_name, settings, output_root, pipeline_run_id))
