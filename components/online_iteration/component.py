"""The ``online_iteration`` component (:mod:`components`)."""

from kfp import dsl

from components.images import GPU


@dsl.component(**GPU)
def online_iteration(model: str, data: str, iteration: int, settings: dict, output_root: str,
                     pipeline_run_id: str, nproc_per_node: int = 1, trainjob: dict = {}) -> str:
    """Stage III iteration k: label-free pairs from π_{k−1}'s self-consistency, then train π_k."""
    from components.steps import stage_step
    from sherlock.stages.registry import STAGES

    output = stage_step("online", f"online-{iteration}", settings | {"iteration": iteration, "iterations": 1},
                        output_root, pipeline_run_id, nproc_per_node, trainjob, model=model, data=data)
    return STAGES["online"].handed_on(output, iteration=iteration)
