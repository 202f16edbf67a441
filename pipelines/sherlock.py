"""The Sherlock pipeline (KFP v2): sample → R0 → Y^l → Sherlock-SFT → offline preferences → offline
training → K online iterations → evaluate every checkpoint → register each → gate the champion →
deploy it to KServe when this run promoted one.

Compile (offline): ``python -m pipelines.sherlock --output pipelines/sherlock.yaml``. K and the
cluster settings (accelerator, node selector, tolerations, volumes, secrets) are fixed at compile
time (KFP v2 has no recursion: the online iterations are unrolled); everything else is a run
parameter. The default settings are the paper's (``configs/paper/*.yaml``).
"""

from pathlib import Path

from kfp import dsl

from pipelines.common import ClusterOptions, compile_command, component_runner, evaluate_and_deploy, inputs_and_subsets
from sherlock import recipes
from sherlock.stages.registry import preset

PIPELINE_FILE = Path(__file__).with_suffix(".yaml")


def build_pipeline(online_iterations: int = 2, options: ClusterOptions | None = None):
    """The pipeline function with K = ``online_iterations`` unrolled and ``options`` applied."""
    options = options or ClusterOptions()

    @dsl.pipeline(name="sherlock", description=__doc__.splitlines()[0])
    def sherlock(
        base_model: str = "embedded",
        train_data: str = "embedded",
        benchmarks: str = "embedded",
        output_root: str = "s3://sherlock/runs",
        registry_root: str = "s3://sherlock-models",
        subset_sizes: str = "D_A=10000,D_B=10000,D_U=5000",
        seed: int = 0,
        sft_r0_settings: dict = preset("sft.r0"),
        sample_rejected_settings: dict = preset("sample-rejected"),
        sft_sherlock_settings: dict = preset("sft.sherlock"),
        build_preferences_settings: dict = preset("build-preferences"),
        train_preferences_offline_settings: dict = preset("train-preferences.offline"),
        online_settings: dict = preset("online"),
        evaluate_settings: dict = preset("evaluate"),
        model_name: str = "sherlock",
        selection_metric: str = "llava_cot/round_1",
        promotion_margin: float = 0.0,
        deploy_settings: dict = {},
        gpus: int = 1,
    ):
        run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
        common = {"output_root": output_root, "pipeline_run_id": run_id}
        inputs, subsets = inputs_and_subsets(options, base_model, train_data, benchmarks, subset_sizes, seed, common)
        run = component_runner(options, gpus, {
            "sft.r0": sft_r0_settings, "sample-rejected": sample_rejected_settings,
            "sft.sherlock": sft_sherlock_settings, "build-preferences": build_preferences_settings,
            "train-preferences.offline": train_preferences_offline_settings, "online": online_settings}, common)
        checkpoints = recipes.sherlock(run, inputs.outputs["base_model"], subsets["D_A"], subsets["D_B"],
                                       subsets["D_U"], online_iterations)
        r0 = checkpoints.pop("r0")  # evaluated as the baseline, no candidate: vanilla SFT cannot correct itself
        evaluate_and_deploy(list(checkpoints.items()), inputs.outputs["benchmarks"], subsets["D_A"], options, gpus,
                            evaluate_settings, model_name, selection_metric, promotion_margin, deploy_settings, run_id,
                            registry_root, common, baselines=(("r0", r0),))

    return sherlock


def main(argv: list[str] | None = None) -> None:
    """Compile the Sherlock pipeline (``python -m pipelines.sherlock --help``)."""
    def online_iterations(parser):
        parser.add_argument("--online-iterations", type=int, default=2, help="K, unrolled at compile time")

    compile_command("compile the Sherlock pipeline", PIPELINE_FILE,
                    lambda options, args: build_pipeline(args.online_iterations, options), argv, online_iterations)


if __name__ == "__main__":
    main()
