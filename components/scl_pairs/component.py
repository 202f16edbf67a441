"""The ``scl_pairs`` component (:mod:`components`)."""

from kfp import dsl

from components.images import GPU


@dsl.component(**GPU)
def scl_pairs(model: str, data: str, settings: dict, output_root: str, pipeline_run_id: str,
              nproc_per_node: int = 1) -> str:
    """SCL data: answer, review in the same chat, keep (−,+) and (+,−) outcomes as DPO pairs.

    Args:
        model: URI of the instruction-following model that answers and reviews.
        data: URI of D_B (labelled: the gold answer types both turns).
        settings: The stage's config fields (``sherlock <stage> --help``): its preset and the run's overrides.
        output_root: Where steps write: this step writes ``<output_root>/<pipeline_run_id>/<step>``.
        pipeline_run_id: The KFP run id: the output folder and the MLflow parent run.
        nproc_per_node: Ranks per node, one per GPU of the step.
    """
    from components.steps import stage_step

    return stage_step("scl-pairs", "scl-pairs", settings, output_root, pipeline_run_id, nproc_per_node, model=model,
                      data=data)
