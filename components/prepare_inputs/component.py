"""The ``prepare_inputs`` component (:mod:`components`)."""

from typing import NamedTuple

from kfp import dsl

from components.images import CPU


@dsl.component(**CPU)
def prepare_inputs(base_model: str, train_data: str, benchmarks: str, output_root: str, pipeline_run_id: str,
                   seed: int) -> NamedTuple("Inputs", base_model=str, train_data=str, benchmarks=str):
    """Pass the given URIs through, or build the embedded default (synthetic task + tiny VLM).

    Args:
        base_model: URI of the base model, or ``embedded`` (``embedded:<family>``) for the tiny default.
        train_data: URI of the LLaVA-CoT-layout training data, or ``embedded``.
        benchmarks: ``name=URI`` pairs, comma-separated, or ``embedded``.
        output_root: Where steps write: this step writes ``<output_root>/<pipeline_run_id>/<step>``.
        pipeline_run_id: The KFP run id: the output folder and the MLflow parent run.
        seed: Seed of the embedded default's synthetic data.
    """
    from components.steps import embedded_inputs

    return embedded_inputs(base_model, train_data, benchmarks, output_root, pipeline_run_id, seed=seed)
