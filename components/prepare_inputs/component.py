"""The ``prepare_inputs`` component (:mod:`components`)."""

from typing import NamedTuple

from kfp import dsl

from components.images import CPU


@dsl.component(**CPU)
def prepare_inputs(base_model: str, train_data: str, benchmarks: str, output_root: str, pipeline_run_id: str,
                   seed: int) -> NamedTuple("Inputs", base_model=str, train_data=str, benchmarks=str):
    """Pass the given URIs through, or build the embedded default (synthetic task + tiny VLM)."""
    from components.steps import embedded_inputs

    return embedded_inputs(base_model, train_data, benchmarks, output_root, pipeline_run_id, seed=seed)
