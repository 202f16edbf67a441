"""The ``octopus_sft_data`` component (:mod:`components`)."""

from kfp import dsl

from components.images import GPU


@dsl.component(**GPU)
def octopus_sft_data(model: str, data: str, settings: dict, output_root: str, pipeline_run_id: str,
                     nproc_per_node: int = 1) -> str:
    """Octopus cold start: the model's own sampled o1 ⊕ SEP ⊕ the gold o2, w→c : c→c = 6 : 4; returns its data set.

    Args:
        model: URI of the model whose own answers are o1 (R0).
        data: URI of D_B (labelled: the gold answers judge o1, the gold responses are o2).
        settings: The stage's config fields (``sherlock <stage> --help``): its preset and the run's overrides.
        output_root: Where steps write: this step writes ``<output_root>/<pipeline_run_id>/<step>``.
        pipeline_run_id: The KFP run id: the output folder and the MLflow parent run.
        nproc_per_node: Ranks per node, one per GPU of the step.
    """
    from components.steps import stage_step

    return stage_step("octopus-sft-data", "octopus-sft-data", settings, output_root, pipeline_run_id,
                      nproc_per_node, model=model, data=data)
