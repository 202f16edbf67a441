"""The ``sample_rejected`` component (:mod:`components`)."""

from kfp import dsl

from components.images import GPU


@dsl.component(**GPU)
def sample_rejected(model: str, data: str, settings: dict, output_root: str, pipeline_run_id: str,
                    nproc_per_node: int = 1) -> str:
    """Stage I: sample Y^l from R0 on D_B; returns the URI of rejected.jsonl."""
    from components.steps import stage_step
    from sherlock.stages.registry import STAGES

    output = stage_step("sample-rejected", "rejected", settings, output_root, pipeline_run_id, nproc_per_node,
                        model=model, data=data)
    return STAGES["sample-rejected"].handed_on(output)
