"""Run a compiled recipe pipeline (``pipelines/{sherlock,scl,stic,octopus}.yaml``) on this machine through kfp.local.

The embedded default: the synthetic visual-reasoning task, the tiny VLM, MLflow on a local sqlite
file, artifacts on local disk, settings from ``configs/embedded/``. Ends by printing the time of
each stage, the accuracy table of every checkpoint, and one held-out question answered by the
registered champion, served from the MLflow registry by ``sherlock serve`` (a KServe ModelServer).

    python -m pipelines.run_local                 # the full embedded Sherlock run
    python -m pipelines.run_local --recipe scl    # the SCL (or stic, octopus) pipeline
    python -m pipelines.run_local --quick         # a reduced configuration (the test suite's)
    python -m pipelines.run_local --quick --gpus 2  # every GPU step on 2 ranks (torchrun, gloo)
    python -m pipelines.run_local --quick --online-iterations 0 --base-model embedded:gemma3  # a tiny Gemma 3

Tasks run as kfp.local's subprocesses, forked from a warm interpreter that imported torch,
transformers, TRL and MLflow once (:mod:`pipelines.warm_tasks`; ``--cold-tasks``: a fresh
interpreter per task, as kfp.local starts them).
"""

import argparse
import base64
import contextlib
import io
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

from pipelines.warm_tasks import warm_tasks
from sherlock.gate import GATE_KEY_ENV

PIPELINES = Path(__file__).resolve().parent
RECIPES = ("sherlock", "scl", "stic", "octopus")
# pipeline parameter -> embedded preset (configs/embedded/<preset>.yaml), per recipe
# the presets of each recipe's training steps (configs/embedded/<name>.yaml -> pipeline parameter <name>_settings)
PRESETS = {
    "sherlock": ("sft.r0", "sample-rejected", "sft.sherlock", "build-preferences", "train-preferences.offline",
                 "online"),
    "scl": ("sft.r0", "scl-pairs", "train-preferences.scl"),
    "stic": ("sft.r0", "stic-pairs", "train-preferences.stic", "stic-describe", "sft.stic"),
    "octopus": ("sft.r0", "octopus-sft-data", "sft.octopus", "train-rl.octopus-1", "train-rl.octopus-2",
                "evaluate.octopus"),
}
SUBSETS = {"sherlock": "D_A=250,D_B=250,D_U=100", "scl": "D_A=400,D_B=400", "stic": "D_A=400,D_U=400",
           "octopus": "D_A=250,D_B=250,D_U=100"}
QUICK_SUBSETS = {"sherlock": "D_A=12,D_B=12,D_U=12", "scl": "D_A=24,D_B=24", "stic": "D_A=12,D_U=12",
                 "octopus": "D_A=24,D_B=24,D_U=8"}
# --quick: the same pipeline with a few items and steps per stage. SCL keeps only pairs whose two
# answers differ in correctness, so its R0 trains long enough (80 steps) to answer some questions
# right, and its answers are long enough to reach a conclusion; Octopus's cold start keeps only answers in the
# response format and needs items answered right as well as wrong, so its R0 trains longer and samples once; its
# second attempts are rewritten by R0 (the paper's mixed sampling), where a rewrite fails by the gold one.
QUICK = {"all": {"max_new_tokens": 12, "generation_batch_size": 32, "logging_steps": 1},
         "sft.r0": {"epochs": 1, "max_steps": 2, "batch_size": 4, "grad_accum": 1},
         "sft.sherlock": {"epochs": 1, "max_steps": 2, "batch_size": 4, "grad_accum": 1},
         "train-preferences.offline": {"max_steps": 2, "batch_size": 2},
         "online": {"num_pairs": 4, "max_steps": 1, "batch_size": 2},
         "train-preferences.scl": {"max_steps": 2, "batch_size": 2},
         "train-preferences.stic": {"max_steps": 2, "batch_size": 2},
         "stic-describe": {"num_items": 4}, "sft.stic": {"epochs": 1, "max_steps": 2, "batch_size": 2},
         "sft.octopus": {"epochs": 1, "max_steps": 2, "batch_size": 4, "grad_accum": 1},
         "train-rl.octopus-1": {"max_steps": 2, "max_completion_length": 48},
         "train-rl.octopus-2": {"max_steps": 2, "max_completion_length": 48}, "evaluate.octopus": {"limit": 8}}
QUICK_RECIPE = {"scl": {"sft.r0": {"max_steps": 80, "batch_size": 8}, "scl-pairs": {"max_new_tokens": 160}},
                "octopus": {"sft.r0": {"max_steps": 120, "batch_size": 8},
                            "octopus-sft-data": {"max_new_tokens": 160, "samples": 1, "rewrite": True}}}


def model_name(recipe: str) -> str:
    """The registered model an embedded run of ``recipe`` writes: ``<recipe>-embedded``."""
    return f"{recipe}-embedded"


def embedded_arguments(workdir: Path, quick: bool, recipe: str = "sherlock") -> dict:
    """Pipeline arguments of the embedded default (``quick``: the reduced configuration)."""
    from components.images import CPU_IMAGE
    from pipelines.common import settings_parameter
    from sherlock.serving.deploy import DeployConfig
    from sherlock.stages.registry import preset

    arguments = {}
    for name in PRESETS[recipe]:
        values = preset(name, "embedded")
        if quick:
            values |= ({k: v for k, v in QUICK["all"].items() if k in values} | QUICK.get(name, {})
                       | QUICK_RECIPE.get(recipe, {}).get(name, {}))
        arguments[settings_parameter(name)] = values
    return arguments | {
        "output_root": str(workdir / "artifacts"),
        "registry_root": str(workdir / "registry"),
        "subset_sizes": (QUICK_SUBSETS if quick else SUBSETS)[recipe],
        "evaluate_settings": preset("evaluate", "embedded") | ({"limit": 8} if quick else {}),
        "model_name": model_name(recipe),
        # the predictor would run in the CPU image: the embedded model needs no GPU
        "deploy_settings": preset("deploy", "embedded", DeployConfig) | {"image": CPU_IMAGE},
    }


def stage_seconds(pipeline_run_id: str) -> dict[str, float]:
    """Wall time of every stage of the pipeline run, from the MLflow stage runs."""
    import mlflow

    from sherlock.stages.runner import SECONDS_METRIC
    from sherlock.tracking import PIPELINE_RUN_TAG

    runs = mlflow.search_runs(search_all_experiments=True, output_format="list",
                              filter_string=f"tags.`{PIPELINE_RUN_TAG}` = '{pipeline_run_id}'")
    return {r.info.run_name: r.data.metrics[SECONDS_METRIC] for r in sorted(runs, key=lambda r: r.info.start_time)
            if SECONDS_METRIC in r.data.metrics}


def main(argv: list[str] | None = None) -> dict:
    """Run a recipe's compiled pipeline through kfp.local; returns the run's summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("runs/pipeline"))
    parser.add_argument("--recipe", choices=RECIPES, default="sherlock", help="which pipeline to run")
    parser.add_argument("--quick", action="store_true", help="a reduced configuration (seconds per stage)")
    parser.add_argument("--online-iterations", type=int, default=None,
                        help="recompile with this K instead of running the committed pipelines/sherlock.yaml")
    parser.add_argument("--cold-tasks", action="store_true",
                        help="start every task in a fresh interpreter instead of forking a warm one")
    parser.add_argument("--gpus", type=int, default=1,
                        help="the pipeline's gpus: each GPU step runs on this many ranks (on CPU here: gloo)")
    parser.add_argument("--base-model", default="embedded",
                        help="the pipeline's base_model: embedded (the committed tiny Mllama), embedded:FAMILY "
                             "(a tiny model of that family drawn at random), or a checkpoint URI")
    args = parser.parse_args(argv)
    if args.online_iterations is not None and args.recipe != "sherlock":
        parser.error("--online-iterations applies to the Sherlock recipe only")
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    package = PIPELINES / f"{args.recipe}.yaml"
    if args.online_iterations is not None:
        from kfp import compiler

        from pipelines.sherlock import build_pipeline

        package = workdir / "sherlock.yaml"
        compiler.Compiler().compile(build_pipeline(args.online_iterations), str(package))
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{workdir / 'mlflow.db'}")
    os.environ.setdefault("SHERLOCK_CACHE", str(workdir / "cache"))
    os.environ.setdefault(GATE_KEY_ENV, gate_key_of(workdir))  # the gate signs, the served champion is checked

    import mlflow
    from kfp import components, local

    if mlflow.get_experiment_by_name("sherlock") is None:  # keep MLflow's artifacts in the workdir, not ./mlruns
        mlflow.create_experiment("sherlock", artifact_location=(workdir / "mlartifacts").as_uri())

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(workdir / "kfp"))
    pipeline = components.load_component_from_file(str(package))
    start = time.perf_counter()
    with contextlib.nullcontext() if args.cold_tasks else warm_tasks():
        pipeline(**embedded_arguments(workdir, args.quick, args.recipe), gpus=args.gpus, base_model=args.base_model)
    total = time.perf_counter() - start
    return report(workdir, total, model_name(args.recipe))


def gate_key_of(workdir: Path) -> str:
    """The gate's signing key of the runs in ``workdir`` (``gate.key``, made once, readable by its owner
    only): a champion promoted in an earlier run keeps its signature valid.
    """
    path = workdir / "gate.key"
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(secrets.token_hex(32))
    return path.read_text().strip()


def ask_served_champion(item, workdir: Path, name: str) -> dict:
    """Serve ``models:/…@champion`` with ``sherlock serve`` (KServe) and ask it one question over v1."""
    import httpx

    from sherlock.machine import free_port

    port = free_port()
    with open(workdir / "serve.log", "w") as log:
        server = subprocess.Popen([sys.executable, "-m", "sherlock.cli", "serve", "--model",
                                   f"models:/{name}@champion", "--http-port", str(port)],
                                  stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/v1/models/sherlock"
        deadline = time.time() + 180
        while server.poll() is None and time.time() < deadline:
            try:
                httpx.get(f"{url}", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.5)
        buffer = io.BytesIO()
        item.image.save(buffer, format="PNG")
        instance = {"image": base64.b64encode(buffer.getvalue()).decode(), "question": item.prompt,
                    "self_correction_rounds": 1, "max_new_tokens": 160}
        response = httpx.post(f"{url}:predict", json={"instances": [instance]}, timeout=300)
        response.raise_for_status()
        return response.json()["predictions"][0]
    finally:
        server.terminate()
        server.wait(30)


def report(workdir: Path, total: float, name: str) -> dict:
    """Print per-stage timings, the accuracy table and one answer of the champion; return a summary."""
    import mlflow

    from sherlock.benchmarks import load_benchmark
    from sherlock.stages.evaluate import TABLE_FILE

    run_dir = max((workdir / "artifacts").iterdir(), key=lambda p: p.stat().st_mtime)  # this run's outputs
    seconds = stage_seconds(run_dir.name)
    import torch

    from sherlock.machine import matmul_flops_per_second

    gflops = matmul_flops_per_second() / 1e9
    print(f"\nstage timings (total {total / 60:.1f} min; this machine: {gflops:.0f} GFLOP/s float32 matmul, "
          f"{torch.get_num_threads()} threads):")
    for stage, value in seconds.items():
        print(f"  {stage:<40} {value:7.1f} s")
    print("\naccuracy (%), direct and after self-correction:")
    for table in sorted(run_dir.glob(f"eval-*/{TABLE_FILE}")):
        print(f"{table.parent.name}\n{table.read_text()}")
    client = mlflow.MlflowClient()
    champion = client.get_model_version_by_alias(name, "champion")
    item = load_benchmark("llava_cot", run_dir / "data/eval/data.jsonl", limit=1)[0]
    answer = ask_served_champion(item, workdir, name)
    deployment = json.loads((run_dir / "deploy" / "deployment.json").read_text())
    print(f"champion: version {champion.version} ({champion.tags.get('checkpoint_uri')})")
    manifest = run_dir / "deploy" / "inferenceservice.yaml"
    print(f"InferenceService manifest of the champion (validated offline): {manifest}")
    print(f"question: {item.prompt}\ngold: {item.answer}\n"
          f"answer of the served champion after 1 self-correction round: {answer['answer']}")
    summary = {"pipeline_run_id": run_dir.name, "total_seconds": total, "matmul_gflops": gflops,
               "stage_seconds": seconds,
               "champion_version": str(champion.version), "deployment": deployment, "answer": answer}
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
