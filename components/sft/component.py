"""The ``sft`` component (:mod:`components`)."""

from kfp import dsl

from components.images import GPU


@dsl.component(**GPU)
def sft(name: str, model: str, data: str, settings: dict, output_root: str, pipeline_run_id: str,
        rejected: str = "", nproc_per_node: int = 1, trainjob: dict = {}) -> str:
    """Stage I: R0 (SFT on D_A) or, with ``rejected`` set, Sherlock-SFT on D_B (Eq. 3).

    Args:
        name: The step's name (``r0``, ``sherlock-sft``, …): its output folder and MLflow run.
        model: URI of the model the stage starts from (an ``s3://`` prefix or a directory).
        data: URI of the stage's data set.
        settings: The stage's config fields (``sherlock <stage> --help``): its preset and the run's overrides.
        output_root: Where steps write: this step writes ``<output_root>/<pipeline_run_id>/<step>``.
        pipeline_run_id: The KFP run id: the output folder and the MLflow parent run.
        rejected: URI of Y^l from ``sample_rejected``; empty: vanilla SFT.
        nproc_per_node: Ranks per node, one per GPU of the step.
        trainjob: TrainJob settings (``components.trainjob.TrainJobSettings``); empty: train in the step's pod.
    """
    from components.steps import stage_step

    extra = {"rejected": rejected} if rejected else {}
    return stage_step("sft", name, settings, output_root, pipeline_run_id, nproc_per_node, trainjob, model=model,
                      data=data, **extra)
