"""The ``online`` component (:mod:`components`)."""

from kfp import dsl

from components.images import GPU


@dsl.component(**GPU)
def online(model: str, data: str, iteration: int, settings: dict, output_root: str,
                     pipeline_run_id: str, nproc_per_node: int = 1, trainjob: dict = {}) -> str:
    """Stage III iteration k: label-free pairs from π_{k−1}'s self-consistency, then train π_k.

    Args:
        model: URI of the model the stage starts from (an ``s3://`` prefix or a directory).
        data: URI of the unlabeled pool D_U.
        iteration: k, from 1: π_k starts from ``model`` = π_{k−1}.
        settings: The stage's config fields (``sherlock <stage> --help``): its preset and the run's overrides.
        output_root: Where steps write: this step writes ``<output_root>/<pipeline_run_id>/<step>``.
        pipeline_run_id: The KFP run id: the output folder and the MLflow parent run.
        nproc_per_node: Ranks per node, one per GPU of the step.
        trainjob: TrainJob settings (``components.trainjob.TrainJobSettings``); empty: train in the step's pod.
    """
    from components.steps import stage_step
    from sherlock.stages.registry import STAGES

    output = stage_step("online", f"online-{iteration}", settings | {"iteration": iteration, "iterations": 1},
                        output_root, pipeline_run_id, nproc_per_node, trainjob, model=model, data=data)
    return STAGES["online"].handed_on(output, iteration=iteration)
