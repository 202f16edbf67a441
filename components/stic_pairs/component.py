"""The ``stic_pairs`` component (:mod:`components`)."""

from kfp import dsl

from components.images import GPU


@dsl.component(**GPU)
def stic_pairs(model: str, data: str, settings: dict, output_root: str, pipeline_run_id: str,
               nproc_per_node: int = 1) -> str:
    """STIC stage 1 data: a described clean image preferred over a hallucinated or corrupted-image one."""
    from components.steps import stage_step

    return stage_step("stic-pairs", "stic-pairs", settings, output_root, pipeline_run_id, nproc_per_node,
                      model=model, data=data)
