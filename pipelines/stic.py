"""The STIC pipeline (KFP v2): sample → instruction SFT (R0) → stage 1: description pairs on unlabeled
images → DPO + regulariser → stage 2: description-infused SFT → evaluate → register → gate → deploy.

The same components as the Sherlock pipeline (``pipelines/common.py``); the recipe is spec §3.
Compile: ``python -m pipelines.stic`` (``--no-warm-start`` drops the SFT step for a base model that
already follows instructions, as in the paper, which starts from LLaVA-v1.6).
"""

from pathlib import Path

from kfp import dsl

from pipelines.common import (
    ClusterOptions,
    compile_command,
    component_runner,
    evaluate_and_deploy,
    inputs_and_subsets,
    warm_start_argument,
)
from sherlock import recipes
from sherlock.stages.registry import preset

PIPELINE_FILE = Path(__file__).with_suffix(".yaml")


def build_pipeline(warm_start: bool = True, options: ClusterOptions | None = None):
    """The pipeline function; ``warm_start`` adds the R0 SFT step on D_A before stage 1."""
    options = options or ClusterOptions()

    @dsl.pipeline(name="sherlock-stic", description=__doc__.splitlines()[0])
    def stic(
        base_model: str = "embedded",
        train_data: str = "embedded",
        benchmarks: str = "embedded",
        output_root: str = "s3://sherlock/runs",
        registry_root: str = "s3://sherlock-models",
        subset_sizes: str = "D_A=10000,D_U=6000",
        seed: int = 0,
        sft_r0_settings: dict = preset("sft.r0"),
        stic_pairs_settings: dict = preset("stic-pairs"),
        train_preferences_stic_settings: dict = preset("train-preferences.stic"),
        stic_describe_settings: dict = preset("stic-describe"),
        sft_stic_settings: dict = preset("sft.stic"),
        evaluate_settings: dict = preset("evaluate"),
        model_name: str = "sherlock-stic",
        selection_metric: str = "llava_cot/round_1",
        promotion_margin: float = 0.0,
        deploy_settings: dict = {},
        gpus: int = 1,
    ):
        run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
        common = {"output_root": output_root, "pipeline_run_id": run_id}
        inputs, subsets = inputs_and_subsets(options, base_model, train_data, benchmarks, subset_sizes, seed, common)
        run = component_runner(options, gpus, {
            "sft.r0": sft_r0_settings, "stic-pairs": stic_pairs_settings,
            "train-preferences.stic": train_preferences_stic_settings, "stic-describe": stic_describe_settings,
            "sft.stic": sft_stic_settings}, common)
        start_name, start = recipes.starting_model(run, warm_start, inputs.outputs["base_model"], subsets["D_A"])
        checkpoints = {start_name: start} | recipes.stic(run, start, subsets["D_A"], subsets["D_U"])
        evaluate_and_deploy(list(checkpoints.items()), inputs.outputs["benchmarks"], subsets["D_A"], options, gpus,
                            evaluate_settings, model_name, selection_metric, promotion_margin, deploy_settings, run_id,
                            registry_root, common)

    return stic


def main(argv: list[str] | None = None) -> None:
    """Compile the STIC pipeline (``python -m pipelines.stic --help``)."""
    compile_command("compile the STIC pipeline", PIPELINE_FILE,
                    lambda options, args: build_pipeline(args.warm_start, options), argv, warm_start_argument)


if __name__ == "__main__":
    main()
