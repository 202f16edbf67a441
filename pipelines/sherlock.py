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

from components.build_preferences import build_preferences
from components.online_iteration import online_iteration
from components.sample_rejected import sample_rejected
from components.sft import sft
from components.train_preferences import train_preferences
from pipelines.common import ClusterOptions, compile_command, evaluate_and_deploy, gpu_step, inputs_and_subsets
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
        gpu = gpu_step(options, gpus)
        inputs, subsets = inputs_and_subsets(options, base_model, train_data, benchmarks, subset_sizes, seed, common)
        base = inputs.outputs["base_model"]
        d_a, d_b, d_u = (subsets[name] for name in ("D_A", "D_B", "D_U"))
        r0 = gpu(sft(name="r0", model=base, data=d_a, rejected="", settings=sft_r0_settings, **common),
                 "R0 (SFT on D_A)")
        rejected = gpu(sample_rejected(model=r0.output, data=d_b, settings=sample_rejected_settings, **common),
                       "sample Y^l (R0 on D_B)")
        sherlock_sft = gpu(sft(name="sherlock-sft", model=base, data=d_b, rejected=rejected.output,
                               settings=sft_sherlock_settings, **common), "Sherlock-SFT")
        pairs = gpu(build_preferences(model=sherlock_sft.output, data=d_a, settings=build_preferences_settings,
                                      **common), "offline preference pairs")
        offline = gpu(train_preferences(name="sherlock-offline", model=sherlock_sft.output, data=pairs.output,
                                        settings=train_preferences_offline_settings, **common),
                      "Sherlock offline training")
        checkpoints = [("sherlock-sft", sherlock_sft.output), ("offline", offline.output)]
        model = offline
        for k in range(1, online_iterations + 1):
            model = gpu(online_iteration(model=model.output, data=d_u, iteration=k, settings=online_settings,
                                         **common),
                        f"online iteration {k}")
            checkpoints.append((f"online-{k}", model.output))
        evaluate_and_deploy(checkpoints, inputs.outputs["benchmarks"], d_a, options, gpus, evaluate_settings,
                            model_name, selection_metric, promotion_margin, deploy_settings, run_id, common)

    return sherlock


def main(argv: list[str] | None = None) -> None:
    def online_iterations(parser):
        parser.add_argument("--online-iterations", type=int, default=2, help="K, unrolled at compile time")

    compile_command("compile the Sherlock pipeline", PIPELINE_FILE,
                    lambda options, args: build_pipeline(args.online_iterations, options), argv, online_iterations)


if __name__ == "__main__":
    main()
