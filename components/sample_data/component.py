"""The ``sample_data`` component (:mod:`components`)."""

from typing import NamedTuple

from kfp import dsl

from components.images import CPU


@dsl.component(**CPU)
def sample_data(data: str, sizes: str, seed: int, output_root: str,
                pipeline_run_id: str) -> NamedTuple("Subsets", d_a=str, d_b=str, d_u=str):
    """Stage I data: disjoint seeded subsets D_A, D_B and the unlabeled pool D_U, with a manifest."""
    from components.steps import stage_step
    from sherlock.stages.registry import STAGES

    output = stage_step("sample", "subsets", {"sizes": sizes, "seed": seed, "data_file": "data.jsonl"}, output_root,
                        pipeline_run_id, data=data)
    return tuple(STAGES["sample"].output(output, name) for name in ("D_A", "D_B", "D_U"))
