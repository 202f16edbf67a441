"""The ``train_rl`` component (:mod:`components`)."""

from kfp import dsl

from components.images import GPU


@dsl.component(**GPU)
def train_rl(name: str, model: str, data: str, settings: dict, output_root: str, pipeline_run_id: str,
             nproc_per_node: int = 1, trainjob: dict = {}) -> str:
    """Octopus RL: GSPO on TRL's GRPOTrainer with each group's rollouts recombined into correction pairs.

    One stage per step: Stage I (o1 masked, KL on o1 against the starting model) or Stage II (o1 masked where
    c(o1) ≠ c(o2)), as the settings say. Writes the model and ``rewards.jsonl`` (per-step reward statistics).

    Args:
        name: The step's name (``octopus-stage1``, …): its output folder and MLflow run.
        model: URI of the model the stage starts from (the cold-start SFT model; Stage II: Stage I's).
        data: URI of the RL prompts' data set (D_U, with gold answers: the reward checks them).
        settings: The stage's config fields (``sherlock <stage> --help``): its preset and the run's overrides.
        output_root: Where steps write: this step writes ``<output_root>/<pipeline_run_id>/<step>``.
        pipeline_run_id: The KFP run id: the output folder and the MLflow parent run.
        nproc_per_node: Ranks per node: 1 (a group's pairs are recombined in one process).
        trainjob: TrainJob settings (``components.trainjob.TrainJobSettings``); empty: train in the step's pod.
    """
    from components.steps import stage_step

    return stage_step("train-rl", name, settings, output_root, pipeline_run_id, nproc_per_node, trainjob,
                      model=model, data=data)
