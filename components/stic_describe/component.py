"""The ``stic_describe`` component (:mod:`components`)."""

from kfp import dsl

from components.images import GPU


@dsl.component(**GPU)
def stic_describe(model: str, data: str, settings: dict, output_root: str, pipeline_run_id: str,
                  nproc_per_node: int = 1) -> str:
    """STIC stage 2 data: the stage-1 model's image descriptions put in front of the SFT questions."""
    from components.steps import stage_step

    return stage_step("stic-describe", "stic-described", settings, output_root, pipeline_run_id, nproc_per_node,
                      model=model, data=data)
