"""Run the compiled pipeline (``pipelines/sherlock.yaml``) on this machine through kfp.local.

The embedded default: the synthetic visual-reasoning task, the tiny VLM, MLflow on a local sqlite
file, artifacts on local disk, settings from ``configs/embedded/``. Ends by printing the time of
each stage, the accuracy table of every checkpoint, and one held-out question answered by the
registered champion, served from the MLflow registry by ``sherlock serve`` (a KServe ModelServer).

    python -m pipelines.run_local                 # the full embedded run
    python -m pipelines.run_local --quick         # a reduced configuration (the test suite's)
"""

import argparse
import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

PIPELINE = Path(__file__).with_suffix("").parent / "sherlock.yaml"
MODEL_NAME = "sherlock-embedded"
EMBEDDED = ("r0", "sample_rejected", "sherlock_sft", "preferences", "offline", "online", "evaluate")
# --quick: the same pipeline with a few items and steps per stage
QUICK = {"all": {"max_new_tokens": 12, "generation_batch_size": 32, "logging_steps": 1},
         "r0": {"epochs": 1, "max_steps": 2, "batch_size": 4}, "sherlock_sft": {"epochs": 1, "max_steps": 2,
                                                                                "batch_size": 4},
         "offline": {"max_steps": 2, "batch_size": 2}, "online": {"num_pairs": 4, "max_steps": 1, "batch_size": 2}}


def embedded_arguments(workdir: Path, quick: bool) -> dict:
    """Pipeline arguments of the embedded default (``quick``: the reduced configuration)."""
    import yaml

    from components import CPU_IMAGE
    from pipelines.sherlock import CONFIGS, split_loss

    settings = {}
    for name in EMBEDDED:
        values = yaml.safe_load((CONFIGS / "embedded" / f"{name}.yaml").read_text())
        if quick:
            values |= {k: v for k, v in QUICK["all"].items() if k in values} | QUICK.get(name, {})
        settings[name] = values
    offline, loss = split_loss(settings["offline"])
    online, _ = split_loss(settings["online"])
    return {
        "output_root": str(workdir / "artifacts"),
        "subset_sizes": "D_A=12,D_B=12,D_U=12" if quick else "D_A=400,D_B=400,D_U=400",
        "r0_settings": settings["r0"], "rejected_settings": settings["sample_rejected"],
        "sherlock_sft_settings": settings["sherlock_sft"], "preference_data_settings": settings["preferences"],
        "offline_settings": offline, "online_settings": online, "loss_settings": loss,
        "eval_settings": settings["evaluate"] | ({"limit": 8} if quick else {}),
        "model_name": MODEL_NAME,
        # the predictor would run in the CPU image: the embedded model needs no GPU
        "deploy_settings": yaml.safe_load((CONFIGS / "embedded" / "deploy.yaml").read_text()) | {"image": CPU_IMAGE},
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("runs/pipeline"))
    parser.add_argument("--quick", action="store_true", help="a reduced configuration (seconds per stage)")
    parser.add_argument("--online-iterations", type=int, default=None,
                        help="recompile with this K instead of running the committed pipelines/sherlock.yaml")
    args = parser.parse_args(argv)
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    package = PIPELINE
    if args.online_iterations is not None:
        from kfp import compiler

        from pipelines.sherlock import build_pipeline

        package = workdir / "sherlock.yaml"
        compiler.Compiler().compile(build_pipeline(args.online_iterations), str(package))
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{workdir / 'mlflow.db'}")
    os.environ.setdefault("SHERLOCK_CACHE", str(workdir / "cache"))

    import mlflow
    from kfp import components, local

    if mlflow.get_experiment_by_name("sherlock") is None:  # keep MLflow's artifacts in the workdir, not ./mlruns
        mlflow.create_experiment("sherlock", artifact_location=(workdir / "mlartifacts").as_uri())

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(workdir / "kfp"))
    pipeline = components.load_component_from_file(str(package))
    start = time.perf_counter()
    pipeline(**embedded_arguments(workdir, args.quick))
    total = time.perf_counter() - start
    return report(workdir, total)


def ask_served_champion(item, workdir: Path) -> dict:
    """Serve ``models:/…@champion`` with ``sherlock serve`` (KServe) and ask it one question over v1."""
    import httpx

    port = free_port()
    with open(workdir / "serve.log", "w") as log:
        server = subprocess.Popen([sys.executable, "-m", "sherlock.cli", "serve", "--model",
                                   f"models:/{MODEL_NAME}@champion", "--http-port", str(port)],
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


def report(workdir: Path, total: float) -> dict:
    """Print per-stage timings, the accuracy table and one answer of the champion; return a summary."""
    import mlflow

    from sherlock.benchmarks import load_benchmark
    from sherlock.stages.evaluate import TABLE_FILE

    run_dir = max((workdir / "artifacts").iterdir(), key=lambda p: p.stat().st_mtime)  # this run's outputs
    seconds = stage_seconds(run_dir.name)
    print(f"\nstage timings (total {total / 60:.1f} min):")
    for stage, value in seconds.items():
        print(f"  {stage:<40} {value:7.1f} s")
    print("\naccuracy (%), direct and after self-correction:")
    for table in sorted(run_dir.glob(f"eval-*/{TABLE_FILE}")):
        print(f"{table.parent.name}\n{table.read_text()}")
    client = mlflow.MlflowClient()
    champion = client.get_model_version_by_alias(MODEL_NAME, "champion")
    item = load_benchmark("llava_cot", run_dir / "data/eval/data.jsonl", limit=1)[0]
    answer = ask_served_champion(item, workdir)
    deployment = json.loads((run_dir / "deploy" / "deployment.json").read_text())
    print(f"champion: version {champion.version} ({champion.tags.get('checkpoint_uri')})")
    print(f"InferenceService manifest of the champion (validated offline): {run_dir / 'deploy' / 'inferenceservice.yaml'}")
    print(f"question: {item.prompt}\ngold: {item.answer}\n"
          f"answer of the served champion after 1 self-correction round: {answer['answer']}")
    summary = {"pipeline_run_id": run_dir.name, "total_seconds": total, "stage_seconds": seconds,
               "champion_version": str(champion.version), "deployment": deployment, "answer": answer}
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
