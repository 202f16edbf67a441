"""The ``train_preferences`` component (:mod:`components`)."""

from kfp import dsl

from components.images import GPU


@dsl.component(**GPU)
def train_preferences(name: str, model: str, data: str, settings: dict, output_root: str,
                      pipeline_run_id: str, nproc_per_node: int = 1, trainjob: dict = {}) -> str:
    """Stage II: L_SC + α·L_DPO with the dynamic per-sample β (Eqs. 4–7); β and α are fields of ``settings``.

    The SCL and STIC-stage-1 steps are the same stage with DPO settings (static β, an SFT term).
    """
    from components.steps import stage_step

    return stage_step("train-preferences", name, settings, output_root, pipeline_run_id, nproc_per_node, trainjob,
                      model=model, data=data)
