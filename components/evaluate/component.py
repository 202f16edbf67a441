"""The ``evaluate`` component (:mod:`components`)."""

from kfp import dsl
from kfp.dsl import HTML, Metrics, Output

from components.images import GPU


@dsl.component(**GPU)
def evaluate(name: str, model: str, benchmarks: str, prior_data: str, settings: dict, output_root: str,
             pipeline_run_id: str, metrics: Output[Metrics], report: Output[HTML], nproc_per_node: int = 1) -> str:
    """Direct accuracy, accuracy after each self-correction round and the baselines (blank image, the
    blind prior of ``prior_data``), with a report for the KFP UI."""
    from components.steps import evaluation_report, stage_step

    output = stage_step("evaluate", f"eval-{name}", settings, output_root, pipeline_run_id, nproc_per_node,
                        model=model, benchmarks=benchmarks, prior_data=prior_data)
    for key, value in evaluation_report(output, name, model, report.path).items():
        metrics.log_metric(key, value)
    return output
