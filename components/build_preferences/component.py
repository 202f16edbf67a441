"""The ``build_preferences`` component (:mod:`components`)."""

from kfp import dsl

from components.images import GPU


@dsl.component(**GPU)
def build_preferences(model: str, data: str, settings: dict, output_root: str, pipeline_run_id: str,
                      nproc_per_node: int = 1) -> str:
    """Stage II data: truncate Y^w at step i, perturb the image by ε, continue → Y^l (Alg. 1).

    Args:
        model: URI of the model the stage starts from (an ``s3://`` prefix or a directory).
        data: URI of D_B with the rejected responses handed on by ``sample_rejected``.
        settings: The stage's config fields (``sherlock <stage> --help``): its preset and the run's overrides.
        output_root: Where steps write: this step writes ``<output_root>/<pipeline_run_id>/<step>``.
        pipeline_run_id: The KFP run id: the output folder and the MLflow parent run.
        nproc_per_node: Ranks per node, one per GPU of the step.
    """
    from components.steps import stage_step

    return stage_step("build-preferences", "preferences", settings, output_root, pipeline_run_id, nproc_per_node,
                      model=model, data=data)
