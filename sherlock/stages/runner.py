"""Run a stage with its inputs and output behind URIs, tracked in MLflow.

:func:`run_stage` is what the CLI and the Kubeflow components call:

1. every field marked ``uri="model" | "data" | "named_data"`` is fetched to local disk when it is an
   ``s3://`` URI (checked against its SHA256SUMS manifest; see :mod:`sherlock.storage`);
2. an ``s3://`` output is produced in a local staging directory;
3. inside an MLflow stage run (when tracking is on): params, ``data`` inputs as datasets with their
   digests, per-step metrics, and afterwards the stage's plots, reports and metrics;
4. the output directory gets its manifest and is uploaded (or stays where it is, for local paths).

Under torchrun every rank runs the stage; rank 0 alone tracks, writes the plots and publishes
(:mod:`sherlock.distributed`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path

from sherlock import distributed
from sherlock.config import parse_named, uri_fields
from sherlock.data.schema import PAIRS_FILE
from sherlock.plots import BETA_PLOT, LOSS_PLOT
from sherlock.stages.io import STAGE_CONFIG
from sherlock.stages.registry import STAGES, stage
from sherlock.storage import cache_root, directory_digest, fetch, is_s3, publish, sha256_file

SECONDS_METRIC = "stage_seconds"  # wall time of the stage function (the run itself may be reopened later)
METRICS_FILE, TABLE_FILE, PLOT_FILE = (STAGES["evaluate"].outputs[name] for name in ("metrics", "table", "plot"))
DIAGNOSTICS_FILE = STAGES["diagnose"].outputs["diagnostics"]


def data_digest(path: Path) -> str:
    """sha256 of a data file, or of a directory's SHA256SUMS listing (every file's content and name)."""
    return directory_digest(path) if path.is_dir() else sha256_file(path)


def localize(config) -> tuple[object, list[tuple[str, str, Path]]]:
    """``config`` with its remote inputs fetched and a local output; plus ``(name, uri, local)`` per data input."""
    changes, data = {}, []
    for name in uri_fields(config, "model"):
        if getattr(config, name) is not None:
            changes[name] = str(fetch(getattr(config, name)))
    for name in uri_fields(config, "data"):
        if (uri := getattr(config, name)) is not None:
            changes[name] = str(fetch(uri, with_directory=True))
            data.append((name, uri, Path(changes[name])))
    for name in uri_fields(config, "named_data"):
        named = parse_named(getattr(config, name), name)
        pairs = [(key, uri, fetch(uri, with_directory=True)) for key, uri in named.items()]
        changes[name] = ",".join(f"{key}={local}" for key, _, local in pairs)
        data += pairs
    for name in uri_fields(config, "output"):
        if is_s3(uri := getattr(config, name)):
            changes[name] = str(cache_root() / "outputs" / hashlib.sha256(uri.encode()).hexdigest()[:16])
    return dataclasses.replace(config, **changes), data


def write_plots(output: Path) -> None:
    """Loss curves beside every trained model, a β-weight histogram beside every preference set."""
    from sherlock.data.preferences import read_pairs
    from sherlock.plots import plot_beta_histogram, plot_loss_curves

    for state in output.glob("**/trainer_state.json"):
        if "checkpoint-" not in str(state):
            plot_loss_curves(json.loads(state.read_text())["log_history"], state.with_name(LOSS_PLOT))
    for pairs in output.glob(f"**/{PAIRS_FILE}"):
        plot_beta_histogram([pair.beta_weight for pair in read_pairs(pairs.parent)], pairs.with_name(BETA_PLOT))


def log_outputs(output: Path, seconds: float) -> None:
    """Log what a stage wrote (config, plots, reports, pair statistics, eval metrics) and its wall time."""
    import mlflow

    from sherlock import tracking

    mlflow.log_metric(SECONDS_METRIC, seconds)
    for name in (STAGE_CONFIG, "manifest.json", TABLE_FILE, PLOT_FILE, LOSS_PLOT, BETA_PLOT):
        for path in output.glob(f"**/{name}"):
            mlflow.log_artifact(str(path), artifact_path=str(path.parent.relative_to(output)).strip("."))
    for stats in output.glob("**/stats.json"):
        numbers = json.loads(stats.read_text())
        mlflow.log_metrics({f"pairs/{k}": float(v) for k, v in numbers.items() if isinstance(v, (int, float))})
    if (output / METRICS_FILE).is_file():
        mlflow.log_metrics(tracking.evaluation_metrics(json.loads((output / METRICS_FILE).read_text())))
    if (output / DIAGNOSTICS_FILE).is_file():
        mlflow.log_artifact(str(output / DIAGNOSTICS_FILE))
        mlflow.log_metrics({f"diagnostics/{k}": float(v) for k, v in json.loads(
            (output / DIAGNOSTICS_FILE).read_text()).items() if isinstance(v, (int, float))})


def run_stage(command: str, config, pipeline_run_id: str | None = None):
    """Run stage ``command`` with ``config`` (see the module docstring); returns the stage's result."""
    from sherlock import tracking

    function = stage(command).run
    local, data = localize(config)
    (output_field,) = uri_fields(config, "output")
    output = Path(getattr(local, output_field))
    run_name = f"{command} {Path(str(getattr(config, output_field))).name}"
    if distributed.world_size() > 1:
        print(f"sherlock {command}: rank {distributed.rank()} of world size {distributed.world_size()}",
              file=sys.stderr)
    if not distributed.is_main():
        return function(local)
    with tracking.stage_run(command, config, pipeline_run_id, run_name=run_name) as run:
        if run is not None:
            for name, uri, path in data:
                tracking.log_data_input(uri, data_digest(path), field=name)
        start = time.perf_counter()
        result = function(local)
        seconds = time.perf_counter() - start
        write_plots(output)
        if run is not None:
            log_outputs(output, seconds)
            models = {c.parent for c in output.glob("**/config.json") if "checkpoint-" not in str(c)}
            for model_dir in {output} | models:
                tracking.write_run_file(run, model_dir)
    publish(output, getattr(config, output_field))
    return result
