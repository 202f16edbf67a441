"""The ``train_preferences`` component (:mod:`components`)."""

from kfp import dsl

from components.images import GPU


@dsl.component(**GPU)
def train_preferences(name: str, model: str, data: str, settings: dict, output_root: str,
                      pipeline_run_id: str, nproc_per_node: int = 1, trainjob: dict = {}) -> str:
    """Stage II: L_SC + α·L_DPO with the dynamic per-sample β (Eqs. 4–7); β and α are fields of ``settings``.

    The SCL and STIC-stage-1 steps are the same stage with DPO settings (static β, an SFT term).

    Args:
        name: The step's name (``sherlock-offline``, ``scl``, ``stic-stage1``): its output folder and MLflow run.
        model: URI of the model the stage starts from (an ``s3://`` prefix or a directory).
        data: URI of the preference pairs.
        settings: The stage's config fields (``sherlock <stage> --help``): its preset and the run's overrides.
        output_root: Where steps write: this step writes ``<output_root>/<pipeline_run_id>/<step>``.
        pipeline_run_id: The KFP run id: the output folder and the MLflow parent run.
        nproc_per_node: Ranks per node, one per GPU of the step.
        trainjob: TrainJob settings (``components.trainjob.TrainJobSettings``); empty: train in the step's pod.
    """
    from components.steps import stage_step

    return stage_step("train-preferences", name, settings, output_root, pipeline_run_id, nproc_per_node, trainjob,
                      model=model, data=data)
