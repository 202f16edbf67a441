"""The ``stic_describe`` component (:mod:`components`)."""

from kfp import dsl

from components.images import GPU


@dsl.component(**GPU)
def stic_describe(model: str, data: str, settings: dict, output_root: str, pipeline_run_id: str,
                  nproc_per_node: int = 1) -> str:
    """STIC stage 2 data: the stage-1 model's image descriptions put in front of the SFT questions.

    Args:
        model: URI of the STIC stage-1 model that writes the descriptions.
        data: URI of the labelled SFT subset the descriptions are put in front of.
        settings: The stage's config fields (``sherlock <stage> --help``): its preset and the run's overrides.
        output_root: Where steps write: this step writes ``<output_root>/<pipeline_run_id>/<step>``.
        pipeline_run_id: The KFP run id: the output folder and the MLflow parent run.
        nproc_per_node: Ranks per node, one per GPU of the step.
    """
    from components.steps import stage_step

    return stage_step("stic-describe", "stic-described", settings, output_root, pipeline_run_id, nproc_per_node,
                      model=model, data=data)
