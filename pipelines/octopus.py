"""The Octopus pipeline (KFP v2): sample → instruction SFT (R0) → R0's own answers with gold second attempts →
cold-start SFT → RL Stage I → RL Stage II → evaluate every checkpoint → register → gate → deploy.

The same components as the other recipes (``pipelines/common.py``); the recipe is docs/octopus.md
(:func:`sherlock.recipes.octopus`). The Octopus checkpoints are evaluated with the ``evaluate.octopus`` preset
(round 0 = o1 of the trigger prompt, round k = the attempt after k appended separators), R0 with ``evaluate``.
The RL steps run on ``gpus`` ranks like every training step, each rank on whole groups. Compile:
``python -m pipelines.octopus`` (``--no-warm-start``: the base model already answers in the response format, as the
paper's Qwen3-VL-8B-Instruct does).
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
    """The pipeline function; ``warm_start`` adds the R0 SFT step on D_A before the cold-start data."""
    options = options or ClusterOptions()

    @dsl.pipeline(name="sherlock-octopus", description=__doc__.splitlines()[0])
    def octopus(
        base_model: str = "embedded",
        train_data: str = "embedded",
        benchmarks: str = "embedded",
        output_root: str = "s3://sherlock/runs",
        registry_root: str = "s3://sherlock-models",
        subset_sizes: str = "D_A=10000,D_B=10000,D_U=38000",
        seed: int = 0,
        sft_r0_settings: dict = preset("sft.r0"),
        octopus_sft_data_settings: dict = preset("octopus-sft-data"),
        sft_octopus_settings: dict = preset("sft.octopus"),
        train_rl_octopus_1_settings: dict = preset("train-rl.octopus-1"),
        train_rl_octopus_2_settings: dict = preset("train-rl.octopus-2"),
        evaluate_settings: dict = preset("evaluate"),
        evaluate_octopus_settings: dict = preset("evaluate.octopus"),
        model_name: str = "sherlock-octopus",
        selection_metric: str = "llava_cot/round_1",
        promotion_margin: float = 0.0,
        deploy_settings: dict = {},
        gpus: int = 1,
    ):
        run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
        common = {"output_root": output_root, "pipeline_run_id": run_id}
        inputs, subsets = inputs_and_subsets(options, base_model, train_data, benchmarks, subset_sizes, seed, common)
        run = component_runner(options, gpus, {
            "sft.r0": sft_r0_settings, "octopus-sft-data": octopus_sft_data_settings,
            "sft.octopus": sft_octopus_settings, "train-rl.octopus-1": train_rl_octopus_1_settings,
            "train-rl.octopus-2": train_rl_octopus_2_settings}, common)
        start_name, start = recipes.starting_model(run, warm_start, inputs.outputs["base_model"], subsets["D_A"])
        trained = recipes.octopus(run, start, subsets["D_B"], subsets["D_U"])
        evaluate_and_deploy([(start_name, start), *trained.items()], inputs.outputs["benchmarks"], subsets["D_A"],
                            options, gpus, evaluate_settings, model_name, selection_metric, promotion_margin,
                            deploy_settings, run_id, registry_root, common,
                            checkpoint_settings=dict.fromkeys(trained, evaluate_octopus_settings))

    return octopus


def main(argv: list[str] | None = None) -> None:
    """Compile the Octopus pipeline (``python -m pipelines.octopus --help``)."""
    compile_command("compile the Octopus pipeline", PIPELINE_FILE,
                    lambda options, args: build_pipeline(args.warm_start, options), argv, warm_start_argument)


if __name__ == "__main__":
    main()
