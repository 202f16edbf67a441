"""The ``register_and_gate`` component (:mod:`components`)."""

from kfp import dsl
from kfp.dsl import Metrics, Output

from components.images import CPU


@dsl.component(**CPU)
def register_and_gate(checkpoint: str, evaluation: str, model_name: str, metric: str, margin: float,
                      pipeline_run_id: str, registry_root: str, promoted_before: bool,
                      gate: Output[Metrics]) -> bool:
    """Register the checkpoint in MLflow (alias challenger); move champion only if it wins by ``margin``.

    Returns whether this or an earlier gate of the run (``promoted_before``) moved champion; the
    decision is on the model version's ``gate.decision`` tag and in the ``gate`` metrics.

    Args:
        checkpoint: URI of the checkpoint to register.
        evaluation: URI of its ``evaluate`` output.
        model_name: Registered model name in MLflow.
        metric: Selection metric, ``<benchmark>/<round>`` (e.g. ``mmstar/round_1``).
        margin: How much higher than the champion's the metric must be to move ``champion``.
        pipeline_run_id: The KFP run id: the output folder and the MLflow parent run.
        registry_root: The version's checkpoint is copied to ``<registry_root>/<model_name>/<digest>``.
        promoted_before: Whether an earlier gate of this run moved ``champion``.
        gate: The decision's scores, for the KFP UI.
    """
    from components.steps import register_step

    decision = register_step(checkpoint, evaluation, model_name, metric, margin, pipeline_run_id, registry_root)
    for key in ("challenger_score", "champion_score"):
        if decision[key] is not None:
            gate.log_metric(key, decision[key])
    gate.log_metric("promoted", float(decision["promoted"]))
    return promoted_before or decision["promoted"]
