"""The SCL pipeline (KFP v2): sample → instruction SFT (R0) → two-turn answers typed into SCL
pairs → DPO with an SFT term (LoRA) → evaluate both checkpoints → register → gate → deploy.

The same components as the Sherlock pipeline (``pipelines/common.py``); the recipe is spec §2.
Compile: ``python -m pipelines.scl`` (``--no-warm-start`` drops the SFT step for a base model that
already follows instructions, as in the paper, which starts from LLaVA-1.5 and MiniCPM-V).
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
    """The pipeline function; ``warm_start`` adds the R0 SFT step on D_A before the SCL data."""
    options = options or ClusterOptions()

    @dsl.pipeline(name="sherlock-scl", description=__doc__.splitlines()[0])
    def scl(
        base_model: str = "embedded",
        train_data: str = "embedded",
        benchmarks: str = "embedded",
        output_root: str = "s3://sherlock/runs",
        registry_root: str = "s3://sherlock-models",
        subset_sizes: str = "D_A=10000,D_B=5000",
        seed: int = 0,
        sft_r0_settings: dict = preset("sft.r0"),
        scl_pairs_settings: dict = preset("scl-pairs"),
        train_preferences_scl_settings: dict = preset("train-preferences.scl"),
        evaluate_settings: dict = preset("evaluate"),
        model_name: str = "sherlock-scl",
        selection_metric: str = "llava_cot/round_1",
        promotion_margin: float = 0.0,
        deploy_settings: dict = {},
        gpus: int = 1,
    ):
        run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
        common = {"output_root": output_root, "pipeline_run_id": run_id}
        inputs, subsets = inputs_and_subsets(options, base_model, train_data, benchmarks, subset_sizes, seed, common)
        run = component_runner(options, gpus, {
            "sft.r0": sft_r0_settings, "scl-pairs": scl_pairs_settings,
            "train-preferences.scl": train_preferences_scl_settings}, common)
        start_name, start = recipes.starting_model(run, warm_start, inputs.outputs["base_model"], subsets["D_A"])
        checkpoints = {start_name: start} | recipes.scl(run, start, subsets["D_B"])
        evaluate_and_deploy(list(checkpoints.items()), inputs.outputs["benchmarks"], subsets["D_A"], options, gpus,
                            evaluate_settings, model_name, selection_metric, promotion_margin, deploy_settings, run_id,
                            registry_root, common)

    return scl


def main(argv: list[str] | None = None) -> None:
    """Compile the SCL pipeline (``python -m pipelines.scl --help``)."""
    compile_command("compile the SCL pipeline", PIPELINE_FILE,
                    lambda options, args: build_pipeline(args.warm_start, options), argv, warm_start_argument)


if __name__ == "__main__":
    main()
