"""The ``sample_rejected`` component (:mod:`components`)."""

from kfp import dsl

from components.images import GPU


@dsl.component(**GPU)
def sample_rejected(model: str, data: str, settings: dict, output_root: str, pipeline_run_id: str,
                    nproc_per_node: int = 1) -> str:
    """Stage I: sample Y^l from R0 on D_B; returns the URI of rejected.jsonl.

    Args:
        model: URI of R0, the model that answers D_B.
        data: URI of D_B, whose records' responses are Y^w.
        settings: The stage's config fields (``sherlock <stage> --help``): its preset and the run's overrides.
        output_root: Where steps write: this step writes ``<output_root>/<pipeline_run_id>/<step>``.
        pipeline_run_id: The KFP run id: the output folder and the MLflow parent run.
        nproc_per_node: Ranks per node, one per GPU of the step.
    """
    from components.steps import stage_step
    from sherlock.stages.registry import STAGES

    output = stage_step("sample-rejected", "rejected", settings, output_root, pipeline_run_id, nproc_per_node,
                        model=model, data=data)
    return STAGES["sample-rejected"].handed_on(output)
