"""The ``evaluate`` component (:mod:`components`)."""

from kfp import dsl
from kfp.dsl import HTML, Metrics, Output

from components.images import GPU


@dsl.component(**GPU)
def evaluate(name: str, model: str, benchmarks: str, prior_data: str, settings: dict, output_root: str,
             pipeline_run_id: str, metrics: Output[Metrics], report: Output[HTML], nproc_per_node: int = 1) -> str:
    """Direct accuracy, accuracy after each self-correction round and the baselines (blank image, the
    blind prior of ``prior_data``), with a report for the KFP UI.

    Args:
        name: The checkpoint's name; the step is ``eval-<name>``.
        model: URI of the model the stage starts from (an ``s3://`` prefix or a directory).
        benchmarks: ``name=URI`` pairs, comma-separated (VLMEvalKit TSVs or the synthetic held-out set).
        prior_data: URI of the training data whose answer frequencies give the blind-prior baseline.
        settings: The stage's config fields (``sherlock <stage> --help``): its preset and the run's overrides.
        output_root: Where steps write: this step writes ``<output_root>/<pipeline_run_id>/<step>``.
        pipeline_run_id: The KFP run id: the output folder and the MLflow parent run.
        metrics: Accuracy per benchmark and round, for the KFP UI.
        report: The HTML accuracy table and plot, for the KFP UI.
        nproc_per_node: Ranks per node, one per GPU of the step.
    """
    from components.steps import evaluation_report, stage_step

    output = stage_step("evaluate", f"eval-{name}", settings, output_root, pipeline_run_id, nproc_per_node,
                        model=model, benchmarks=benchmarks, prior_data=prior_data)
    for key, value in evaluation_report(output, name, model, report.path).items():
        metrics.log_metric(key, value)
    return output
