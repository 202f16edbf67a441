"""The ``build_preferences`` component (:mod:`components`)."""

from kfp import dsl

from components.images import GPU


@dsl.component(**GPU)
def build_preferences(model: str, data: str, settings: dict, output_root: str, pipeline_run_id: str,
                      nproc_per_node: int = 1) -> str:
    """Stage II data: truncate Y^w at step i, perturb the image by ε, continue → Y^l (Alg. 1)."""
    from components.steps import stage_step

    return stage_step("build-preferences", "preferences", settings, output_root, pipeline_run_id, nproc_per_node,
                      model=model, data=data)
