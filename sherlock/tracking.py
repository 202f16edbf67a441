"""MLflow lineage: one parent run per pipeline run, a nested run per stage, datasets, metrics, registry.

Tracking is on when ``MLFLOW_TRACKING_URI`` is set (``sqlite:///…`` for the embedded default, the
``mlflow server`` URL on a cluster) and this process is rank 0. The registry flow:

1. a training stage's run logs its data sets as inputs (:func:`log_data_input`) and its per-step
   metrics (:class:`sherlock.training.setup.MlflowMetricsCallback`); the stage writes
   ``mlflow_run.json`` beside its outputs;
2. :func:`register_checkpoint` logs an evaluated checkpoint as a model *in the run that trained it*,
   registers it with its eval metrics and lineage as version tags and points ``challenger`` at it;
3. :func:`gate_champion` moves ``champion`` only when the challenger, registered by the asking
   pipeline run (:func:`check_provenance`), beats it by a margin, and signs what it promotes with the
   gate's key (:mod:`sherlock.gate`, mounted into the gate and deploy steps alone);
4. deploy and serve put a version in front of callers only when :func:`check_deployable` passes: its
   own pipeline's stage run logged it and, where the process holds the gate's key, the gate signed it.
   Whoever holds the pipeline's MLflow login can move ``champion`` (MLflow grants alias moves with
   version writes), but cannot sign.

On the platform MLflow runs its auth app and the steps log in as a non-admin pipeline user
(:mod:`sherlock.mlflow_access`).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

import mlflow
import yaml
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

import sherlock
from sherlock.gate import GATE_KEY_ENV, GATE_SIGNATURE_TAG, gate_key, gate_signature, signed
from sherlock.protocol import read_protocol
from sherlock.storage import directory_digest

RUN_FILE = "mlflow_run.json"  # written into a stage's output directory: which run produced it
PIPELINE_RUN_TAG, STAGE_TAG = "sherlock.pipeline_run_id", "sherlock.stage"
DIGEST_LENGTH = 32  # MLflow stores dataset digests in 36 characters: the first 32 hex digits of a sha256
DIGEST_TAG = "checkpoint_sha256sums"  # a version's tag: sha256 of its checkpoint's SHA256SUMS listing
CHALLENGER, CHAMPION = "challenger", "champion"
# Proxied artifacts: MLflow 3 clients otherwise fetch files through presigned URLs of the artifact
# store, which name its in-cluster address (unreachable from outside) and time out in retries.
os.environ.setdefault("MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD", "false")


class CheckpointMismatchError(ValueError):
    """A checkpoint is not the one its registered version recorded."""


def enabled() -> bool:
    """Whether this process records to MLflow: a tracking URI is set and it is rank 0."""
    return bool(os.environ.get("MLFLOW_TRACKING_URI")) and int(os.environ.get("RANK", "0")) == 0


def _git_commit() -> str:
    if commit := os.environ.get("SHERLOCK_GIT_COMMIT"):
        return commit
    result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def pipeline_run(pipeline_run_id: str, experiment: str = "sherlock") -> str:
    """The id of the parent MLflow run of pipeline run ``pipeline_run_id`` (created on first use)."""
    mlflow.set_experiment(experiment)
    found = mlflow.search_runs(
        filter_string=f"tags.`{PIPELINE_RUN_TAG}` = '{pipeline_run_id}' and tags.`{STAGE_TAG}` = 'pipeline'",
        output_format="list", max_results=1)
    if found:
        return found[0].info.run_id
    tags = {PIPELINE_RUN_TAG: pipeline_run_id, STAGE_TAG: "pipeline", "sherlock.git_commit": _git_commit(),
            "sherlock.image": os.environ.get("SHERLOCK_IMAGE", "local"), "sherlock.version": sherlock.__version__}
    run = mlflow.MlflowClient().create_run(mlflow.get_experiment_by_name(experiment).experiment_id,
                                           run_name=f"pipeline {pipeline_run_id}", tags=tags)
    return run.info.run_id


def _flatten(config) -> dict[str, str]:
    return {key: "" if value is None else str(value) for key, value in dataclasses.asdict(config).items()}


@contextmanager
def stage_run(stage: str, config, pipeline_run_id: str | None = None, experiment: str = "sherlock",
              run_name: str | None = None):
    """A nested MLflow run for one stage (under the pipeline's parent run) with the config as params.

    Yields the active run, or ``None`` when tracking is off. A failing stage ends its run FAILED.
    """
    if not enabled():
        yield None
        return
    parent = pipeline_run(pipeline_run_id, experiment) if pipeline_run_id else None
    mlflow.set_experiment(experiment)
    tags = {STAGE_TAG: stage} | ({PIPELINE_RUN_TAG: pipeline_run_id} if pipeline_run_id else {})
    with mlflow.start_run(run_name=run_name or stage, parent_run_id=parent, nested=parent is not None,
                          tags=tags) as run:
        mlflow.log_params(_flatten(config))
        if parent:
            follow_stages(parent, "RUNNING")
        try:
            yield run
        except BaseException:
            if parent:
                follow_stages(parent, "FAILED")
            raise
    if parent:
        follow_stages(parent, "FINISHED")


def follow_stages(parent: str, stage_status: str) -> None:
    """The pipeline's parent run follows its stages: RUNNING while one runs, FINISHED once none does,
    FAILED for good once one failed (KFP has no step that outlives a failure to close it).
    """
    client = mlflow.MlflowClient()
    info = client.get_run(parent).info
    if info.status == "FAILED":
        return
    if stage_status == "RUNNING":
        client.update_run(parent, status="RUNNING")
        return
    running = client.search_runs([info.experiment_id], max_results=1,
                                 filter_string=f"tags.`mlflow.parentRunId` = '{parent}' and "
                                               "attributes.status = 'RUNNING'")
    if stage_status == "FAILED" or not running:
        client.set_terminated(parent, stage_status)


def write_run_file(run, output_dir: str | Path) -> None:
    """Record in ``output_dir`` which run produced it (the registry step logs the model there)."""
    Path(output_dir, RUN_FILE).write_text(json.dumps(
        {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id,
         "tracking_uri": mlflow.get_tracking_uri()}))


def log_data_input(uri: str, sha256: str, field: str) -> None:
    """Log the data set of config field ``field`` as a run input, named after the field (one name per
    input): its source as an absolute URI and the first 32 hex digits of its sha256.
    """
    if "://" not in str(uri):
        uri = Path(uri).resolve().as_uri()
    with warnings.catch_warnings():  # MLflow registers the local-path source twice and warns about it
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        source = resolve_dataset_source(str(uri))
    dataset = MetaDataset(source=source, name=field, digest=sha256[:DIGEST_LENGTH])
    mlflow.log_input(dataset, context=field)
    mlflow.set_tag(f"sherlock.data.{field}.sha256", sha256)


METRIC_UNSAFE = re.compile(r"[^\w .-]")  # what MLflow refuses in a metric name's part


def evaluation_metrics(metrics: dict) -> dict[str, float]:
    """Flat metrics of evaluate's metrics.json: ``<benchmark>/round_<k>`` (0 = direct),
    ``paper_average/round_<k>`` (when every paper benchmark is scored), and per benchmark the baselines
    (``greedy_direct``, ``blank_image``, ``blind_prior``, ``wait``), ``sc_minus_direct`` with its CI bounds, the
    headroom
    (``oracle_gated/round_<k>``, ``verifier_gated/round_<k>``, ``verifier/rejects_right|wrong``,
    ``flips/round_<k>/<kind>``, ``slices/<format|family>/<label>/<direct|last>``, ``k``, ``pass_at_1``,
    ``pass_at_k``, ``majority_at_k``: :mod:`sherlock.headroom`), the
    ``perception/<check>`` fractions and the direct answer's aAcc/fAcc/qAcc, circular ``vanilla`` and
    per-split scores.
    """
    flat = {f"{name}/round_{k}": r["score"] for name, m in metrics["benchmarks"].items()
            for k, r in enumerate(m["rounds"]) if r["score"] is not None}
    for name, m in metrics["benchmarks"].items():
        flat |= {f"{name}/{key}": m[key]["score"] for key in ("greedy_direct", "blank_image", "wait")
                 if m.get(key) and m[key]["score"] is not None}
        if m.get("blind_prior") is not None:
            flat[f"{name}/blind_prior"] = m["blind_prior"]
        if m.get("sc_minus_direct"):
            paired = m["sc_minus_direct"]
            flat |= {f"{name}/sc_minus_direct": paired["difference"],
                     f"{name}/sc_minus_direct_ci_low": paired["ci_low"],
                     f"{name}/sc_minus_direct_ci_high": paired["ci_high"]}
        flat |= {f"{name}/oracle_gated/round_{k}": value for k, value in enumerate(m.get("oracle_gated", []))}
        flat |= {f"{name}/verifier_gated/round_{k}": value for k, value in enumerate(m.get("verifier_gated", []))}
        flat |= {f"{name}/verifier/{key}": value for key, value in (m.get("verifier") or {}).items()
                 if isinstance(value, float)}
        flat |= {f"{name}/slices/{grouping}/{METRIC_UNSAFE.sub('_', label)}/{key}": value
                 for grouping, labels in m.get("slices", {}).items() for label, row in labels.items()
                 for key, value in row.items() if key in ("direct", "last")}
        flat |= {f"{name}/flips/round_{k}/{kind}": count for k, flips in enumerate(m.get("flips", []), 1)
                 for kind, count in flips.items()}
        flat |= {f"{name}/{key}": value for key, value in (m.get("samples") or {}).items()}
        flat |= {f"{name}/perception/{key}": value for key, value in m.get("perception", {}).items()}
        direct = m["rounds"][0]  # the benchmark's own aggregates, named as VLMEvalKit names them
        flat |= {f"{name}/{key}": direct[key] for key in ("aAcc", "fAcc", "qAcc", "vanilla") if key in direct}
        flat |= {f"{name}/{split}": value for split, value in direct.get("per_split", {}).items()}
    if not metrics.get("paper_average_missing"):  # the paper's average only over all of its benchmarks
        flat |= {f"paper_average/round_{k}": v for k, v in enumerate(metrics.get("paper_average") or [])}
    return flat


PYFUNC_SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "question"), ColSpec("string", "image")]),
    params=ParamSchema([ParamSpec("self_correction_rounds", "long", 0), ParamSpec("max_new_tokens", "long", 512)]))


def runtime_requirements() -> list[str]:
    """The pinned requirements of the registered model: the package's own (no extras) and this MLflow."""
    required = [r for r in importlib.metadata.requires("sherlock-vlm") if "extra ==" not in r]
    return [*required, f"mlflow=={mlflow.__version__}"]


def register_checkpoint(checkpoint: str | Path, model_name: str, eval_metrics: dict[str, float],
                        lineage: dict[str, str]):
    """Log ``checkpoint`` as a model in the run that trained it, register it and alias it ``challenger``.

    The model is logged as code (:mod:`sherlock.mlflow_model`) with the ``sherlock`` package beside it
    and :func:`runtime_requirements`, so ``mlflow models serve`` can build it an environment anywhere.

    The version's tags hold the eval metrics (``eval.<metric>``), ``lineage`` (e.g. checkpoint URI,
    pipeline run id), the training run's id and its data sets' digests and sources
    (``data.<name>.digest`` / ``.source``) and how it self-corrects (``self_correction.correction`` /
    ``.response_format``, :mod:`sherlock.protocol`). Returns the new ``ModelVersion``.
    """
    source = json.loads(Path(checkpoint, RUN_FILE).read_text())
    client = mlflow.MlflowClient()
    with mlflow.start_run(run_id=source["run_id"]), tempfile.TemporaryDirectory() as code:
        package = shutil.copytree(Path(sherlock.__file__).parent, Path(code) / "sherlock",
                                  ignore=shutil.ignore_patterns("__pycache__", "embedded", "crds"))
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(Path(sherlock.__file__).with_name("mlflow_model.py")),
            artifacts={"checkpoint": str(checkpoint)}, code_paths=[str(package)],
            pip_requirements=runtime_requirements(), registered_model_name=model_name, signature=PYFUNC_SIGNATURE)
    version = str(info.registered_model_version)
    protocol = read_protocol(checkpoint)  # how it is served (sherlock.protocol), shown beside its metrics
    lineage = dict(lineage, source_run_id=source["run_id"], **{DIGEST_TAG: directory_digest(checkpoint)},
                   **{f"self_correction.{key}": value for key, value in dataclasses.asdict(protocol).items()})
    for item in client.get_run(source["run_id"]).inputs.dataset_inputs:  # the data the checkpoint was trained on
        lineage[f"data.{item.dataset.name}.digest"] = item.dataset.digest
        lineage[f"data.{item.dataset.name}.source"] = json.loads(item.dataset.source)["uri"]
    for key, value in ({f"eval.{k}": v for k, v in eval_metrics.items()} | lineage).items():
        client.set_model_version_tag(model_name, version, key, str(value))
    client.set_registered_model_alias(model_name, CHALLENGER, version)
    return client.get_model_version(model_name, version)


def verify_checkpoint(version, checkpoint: str | Path) -> None:
    """Refuse a checkpoint (local directory or ``s3://`` URI) whose SHA256SUMS digest is not the one
    its version recorded at registration (:data:`DIGEST_TAG`).
    """
    expected = version.tags.get(DIGEST_TAG)
    if not expected:
        raise CheckpointMismatchError(f"version {version.version} of {version.name} records no {DIGEST_TAG}: "
                                      "register checkpoints with sherlock.tracking.register_checkpoint")
    if (found := directory_digest(checkpoint)) != expected:
        raise CheckpointMismatchError(f"{checkpoint} is not the checkpoint registered as version {version.version} "
                                      f"of {version.name}: SHA256SUMS digest {found[:16]}…, registered "
                                      f"{expected[:16]}…")


def download_checkpoint(model_uri: str) -> Path:
    """The checkpoint directory of a model registered by :func:`register_checkpoint` (``models:/…``) that
    may be served (:func:`check_deployable`), verified against the digest its version recorded
    (:func:`verify_checkpoint`).
    """
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    client = mlflow.MlflowClient()
    version = client.get_model_version(*get_model_name_and_version(client, model_uri))
    check_deployable(client, version)
    model = Path(mlflow.artifacts.download_artifacts(f"models:/{version.name}/{version.version}"))
    flavor = yaml.safe_load((model / "MLmodel").read_text())["flavors"]["python_function"]
    checkpoint = model / flavor["artifacts"]["checkpoint"]["path"]
    verify_checkpoint(version, checkpoint)
    return checkpoint


class ProvenanceError(ValueError):
    """A registry version that the pipeline run asking about it did not register."""


def check_provenance(client, version, pipeline_run_id: str) -> None:
    """Refuse ``version`` unless pipeline run ``pipeline_run_id`` registered it: its ``pipeline_run_id``
    tag names the run, and it was logged in a stage run nested under that pipeline run's parent run.

    With MLflow's auth app only the pipeline's user may write these runs and tags (:mod:`sherlock.mlflow_access`).
    """
    where = f"version {version.version} of {version.name}"
    if version.tags.get("pipeline_run_id") != pipeline_run_id:
        raise ProvenanceError(f"{where} was not registered by pipeline run {pipeline_run_id!r} "
                              f"(its pipeline_run_id tag is {version.tags.get('pipeline_run_id')!r})")
    if not version.run_id:
        raise ProvenanceError(f"{where} names no run: it was not logged by a stage of {pipeline_run_id!r}")
    stage = client.get_run(version.run_id).data.tags
    parent = client.get_run(stage["mlflow.parentRunId"]).data.tags if "mlflow.parentRunId" in stage else {}
    if stage.get(PIPELINE_RUN_TAG) != pipeline_run_id or parent.get(PIPELINE_RUN_TAG) != pipeline_run_id \
            or parent.get(STAGE_TAG) != "pipeline":
        raise ProvenanceError(f"{where} was logged in run {version.run_id}, which is not a stage run of "
                              f"pipeline run {pipeline_run_id!r}")


def check_deployable(client, version) -> None:
    """Refuse to serve ``version`` unless a stage run of its own pipeline run logged it
    (:func:`check_provenance`) and, where this process holds the gate's key, the gate signed it when it
    promoted it (:func:`sherlock.gate.gate_signature`). Without the key (a local run) only the first is checked, said
    on stderr.
    """
    pipeline_run_id = version.tags.get("pipeline_run_id")
    if not pipeline_run_id:
        raise ProvenanceError(f"version {version.version} of {version.name} has no pipeline_run_id tag: "
                              "no pipeline registered it")
    check_provenance(client, version, pipeline_run_id)
    key = gate_key()
    if key is None:
        print(f"warning: no ${GATE_KEY_ENV} here: the gate's signature of version {version.version} of "
              f"{version.name} is not checked", file=sys.stderr)
        return
    if not signed(version, key, DIGEST_TAG):
        raise ProvenanceError(f"version {version.version} of {version.name} carries no valid {GATE_SIGNATURE_TAG}: "
                              "the gate did not promote it (an alias moved by another hand, or a tag changed since)")


def gate_champion(model_name: str, version: str, metric: str, pipeline_run_id: str, margin: float = 0.0) -> dict:
    """Point ``champion`` at ``version`` if its ``eval.<metric>`` beats the champion's by more than ``margin``.

    Only a version registered by pipeline run ``pipeline_run_id`` is considered (:func:`check_provenance`).
    With no champion yet the version becomes champion; where this process holds the gate's key, so it
    does over a champion the gate never signed (moved there by another hand, or promoted before
    signatures), and a promoted version is signed (:func:`sherlock.gate.gate_signature`). Returns the decision with
    both scores; the decision is also written to the version's tags.
    """
    client = mlflow.MlflowClient()
    version = str(version)
    challenger = client.get_model_version(model_name, version)
    check_provenance(client, challenger, pipeline_run_id)
    key = f"eval.{metric}"
    if key not in challenger.tags:
        raise KeyError(f"version {version} of {model_name} has no tag {key}; has {sorted(challenger.tags)}")
    score = float(challenger.tags[key])
    try:
        champion = client.get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException:
        champion = None
    signing_key = gate_key()
    if champion is not None and signing_key is not None and not signed(champion, signing_key, DIGEST_TAG):
        print(f"champion (version {champion.version} of {model_name}) was not signed by the gate: not a score to "
              "beat", file=sys.stderr)
        champion = None
    champion_score = float(champion.tags[key]) if champion is not None and key in champion.tags else None
    promote = champion is None or champion_score is None or score > champion_score + margin
    if promote:
        if signing_key is not None:  # signed before the alias moves: a champion is never unsigned
            client.set_model_version_tag(model_name, version, GATE_SIGNATURE_TAG,
                                         gate_signature(challenger, signing_key, DIGEST_TAG))
        client.set_registered_model_alias(model_name, CHAMPION, version)
    decision = {"promoted": promote, "metric": metric, "margin": margin, "challenger_version": version,
                "challenger_score": score, "champion_version": str(champion.version) if champion else None,
                "champion_score": champion_score}
    client.set_model_version_tag(model_name, version, "gate.decision", json.dumps(decision))
    return decision

