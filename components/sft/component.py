"""The ``sft`` component (:mod:`components`)."""

from kfp import dsl

from components.images import GPU


@dsl.component(**GPU)
def sft(name: str, model: str, data: str, settings: dict, output_root: str, pipeline_run_id: str,
        rejected: str = "", nproc_per_node: int = 1, trainjob: dict = {}) -> str:
    """Stage I: R0 (SFT on D_A) or, with ``rejected`` set, Sherlock-SFT on D_B (Eq. 3)."""
    from components.steps import stage_step

    extra = {"rejected": rejected} if rejected else {}
    return stage_step("sft", name, settings, output_root, pipeline_run_id, nproc_per_node, trainjob, model=model,
                      data=data, **extra)
