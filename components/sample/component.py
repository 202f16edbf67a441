"""The ``sample`` component (:mod:`components`)."""

from typing import NamedTuple

from kfp import dsl

from components.images import CPU


@dsl.component(**CPU)
def sample(data: str, sizes: str, seed: int, output_root: str,
                pipeline_run_id: str) -> NamedTuple("Subsets", d_a=str, d_b=str, d_u=str):
    """Stage I data: disjoint seeded subsets D_A, D_B and the unlabeled pool D_U, with a manifest.

    Args:
        data: URI of the training data (LLaVA-CoT layout).
        sizes: Subset sizes, ``D_A=N,D_B=N,D_U=N``.
        seed: Seed of the sampling.
        output_root: Where steps write: this step writes ``<output_root>/<pipeline_run_id>/<step>``.
        pipeline_run_id: The KFP run id: the output folder and the MLflow parent run.
    """
    from components.steps import stage_step
    from sherlock.stages.registry import STAGES

    output = stage_step("sample", "subsets", {"sizes": sizes, "seed": seed, "data_file": "data.jsonl"}, output_root,
                        pipeline_run_id, data=data)
    return tuple(STAGES["sample"].output(output, name) for name in ("D_A", "D_B", "D_U"))
