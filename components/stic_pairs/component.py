"""The ``stic_pairs`` component (:mod:`components`)."""

from kfp import dsl

from components.images import GPU


@dsl.component(**GPU)
def stic_pairs(model: str, data: str, settings: dict, output_root: str, pipeline_run_id: str,
               nproc_per_node: int = 1) -> str:
    """STIC stage 1 data: a described clean image preferred over a hallucinated or corrupted-image one.

    Args:
        model: URI of the model STIC improves (it writes both descriptions).
        data: URI of the unlabeled pool D_U (only its images are read).
        settings: The stage's config fields (``sherlock <stage> --help``): its preset and the run's overrides.
        output_root: Where steps write: this step writes ``<output_root>/<pipeline_run_id>/<step>``.
        pipeline_run_id: The KFP run id: the output folder and the MLflow parent run.
        nproc_per_node: Ranks per node, one per GPU of the step.
    """
    from components.steps import stage_step

    return stage_step("stic-pairs", "stic-pairs", settings, output_root, pipeline_run_id, nproc_per_node,
                      model=model, data=data)
