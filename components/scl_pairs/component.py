"""The ``scl_pairs`` component (:mod:`components`)."""

from kfp import dsl

from components.images import GPU


@dsl.component(**GPU)
def scl_pairs(model: str, data: str, settings: dict, output_root: str, pipeline_run_id: str,
              nproc_per_node: int = 1) -> str:
    """SCL data: answer, review in the same chat, keep (−,+) and (+,−) outcomes as DPO pairs."""
    from components.steps import stage_step

    return stage_step("scl-pairs", "scl-pairs", settings, output_root, pipeline_run_id, nproc_per_node, model=model,
                      data=data)
