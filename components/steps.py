"""What the Kubeflow components run: thin functions over the stages, storage and tracking.

Every step writes to ``<output_root>/<pipeline run id>/<step name>`` (an ``s3://`` prefix on a
cluster, a directory for the embedded default) and returns that URI; checkpoints move between
steps as URIs, never through the KFP artifact store.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import tempfile
from pathlib import Path

from sherlock.config import dump_config, load_config
from sherlock.distributed import launch
from sherlock.stages.registry import stage
from sherlock.stages.runner import run_stage
from sherlock.storage import MANIFEST_FILE, copy_published, directory_digest, fetch, publish

EMBEDDED = "embedded"  # the value of base_model / train_data that selects the embedded default
EMBEDDED_FAMILY = "embedded:"  # base_model embedded:<family>: a tiny model of that family, drawn at random


def step_uri(output_root: str, pipeline_run_id: str, name: str) -> str:
    """``<output_root>/<pipeline_run_id>/<name>``: where step ``name`` of a run writes."""
    return f"{output_root.rstrip('/')}/{pipeline_run_id}/{name}"


def stage_step(name: str, step: str, settings: dict, output_root: str, pipeline_run_id: str,
               nproc_per_node: int = 1, trainjob: dict | None = None, **uris) -> str:
    """Run stage ``name`` as step ``step`` with ``settings`` (config fields) and the given input URIs, on
    ``nproc_per_node`` ranks (one per GPU of the step: ``sherlock <stage> --nproc-per-node``), or, with
    ``trainjob`` settings (:class:`components.trainjob.TrainJobSettings`), as a TrainJob on its nodes with
    ``nproc_per_node`` ranks each; returns the step's output URI (its outputs by name:
    :meth:`sherlock.stages.registry.Stage.output`).
    """
    output = step_uri(output_root, pipeline_run_id, step)
    config = load_config(stage(name).config, overrides=dict(settings) | uris | {"output": output})
    if trainjob:
        from components.trainjob import run_trainjob

        if not stage(name).multi_node and trainjob.get("num_nodes", 1) > 1:
            raise ValueError(f"stage {name} runs on one node (its ranks read what rank 0 wrote); "
                             f"got num_nodes={trainjob['num_nodes']}")
        labels = {"sherlock.dev/pipeline-run-id": label_value(pipeline_run_id), "sherlock.dev/step": label_value(step)}
        run_trainjob(trainjob, name, dataclasses.asdict(config), pipeline_run_id, nproc_per_node, labels)
        return output
    if nproc_per_node == 1:
        run_stage(name, config, pipeline_run_id)
        return output
    if not stage(name).multi_rank:
        raise ValueError(f"stage {name} runs on one process; got nproc_per_node={nproc_per_node}")
    with tempfile.TemporaryDirectory() as scratch:
        dump_config(config, Path(scratch) / "config.yaml")
        launch(nproc_per_node, "sherlock.cli", [name, "--config", f"{scratch}/config.yaml",
                                                "--pipeline-run-id", pipeline_run_id])
    return output


def label_value(text: str) -> str:
    """``text`` as a Kubernetes label value (≤ 63 of ``[A-Za-z0-9._-]``, alphanumeric at both ends)."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", text)[:63].strip("-._") or "none"


def embedded_inputs(base_model: str, train_data: str, benchmarks: str, output_root: str, pipeline_run_id: str,
                    num_items: int = 2400, eval_items: int = 200, seed: int = 0) -> tuple[str, str, str]:
    """``(base_model, train_data, benchmarks)``: given URIs pass through; ``embedded`` builds the default.

    The embedded default is the synthetic visual-reasoning task (train and held-out sets from
    different seeds) and the committed base model: a tiny Llama-3.2-Vision pre-trained on synthetic
    perception questions (:func:`sherlock.models.embedded_base`, checked by its digest).
    ``embedded:FAMILY`` (a name of :data:`sherlock.models.families.FAMILIES`) is instead a tiny model
    of that family drawn at random, its tokenizer trained on the run's training data: every stage on
    that architecture, not a model that has learnt anything yet.
    """
    from sherlock.data.llava_cot import load_data
    from sherlock.data.synthetic import generate_synthetic
    from sherlock.models import embedded_base
    from sherlock.models.families import family
    from sherlock.models.tiny import tokenizer_corpus

    tiny_family = family(base_model.removeprefix(EMBEDDED_FAMILY)) if base_model.startswith(EMBEDDED_FAMILY) else None
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        if train_data == EMBEDDED:
            train_file = generate_synthetic(scratch / "train", num_items, seed=seed)
            train_data = publish(train_file.parent, step_uri(output_root, pipeline_run_id, "data/train"))
        if benchmarks == EMBEDDED:
            eval_file = generate_synthetic(scratch / "eval", eval_items, seed=seed + 1_000_003)
            benchmarks = f"llava_cot={publish(eval_file.parent, step_uri(output_root, pipeline_run_id, 'data/eval'))}"
            benchmarks += "/data.jsonl"
        if base_model == EMBEDDED or tiny_family is not None:
            if tiny_family is None:
                shutil.copytree(embedded_base(), scratch / "base", ignore=shutil.ignore_patterns(MANIFEST_FILE))
            else:
                tiny_family.build(scratch / "base", tokenizer_corpus(load_data(fetch(train_data)).records), seed=seed)
            base_model = publish(scratch / "base", step_uri(output_root, pipeline_run_id, "models/base"))
    return base_model, train_data, benchmarks


def register_step(checkpoint: str, evaluation: str, model_name: str, metric: str, margin: float,
                  pipeline_run_id: str, registry_root: str) -> dict:
    """Register an evaluated checkpoint (alias ``challenger``) and let the gate move ``champion``.

    The version names a copy of the checkpoint under ``<registry_root>/<model_name>/<digest>``: the only
    prefix a predictor's S3 identity may read (docs/reliability.md); ``trained_uri`` keeps where it was made.
    """
    from sherlock import tracking
    from sherlock.stages.runner import METRICS_FILE

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", model_name):
        raise ValueError(f"model name {model_name!r}: letters, digits, '.', '_' and '-' only (it names a prefix)")
    metrics = tracking.evaluation_metrics(json.loads((fetch(evaluation) / METRICS_FILE).read_text()))
    local = fetch(checkpoint)  # checked against the manifest whose digest names the copy (S3: no second hashing)
    registered = copy_published(checkpoint, f"{registry_root.rstrip('/')}/{model_name}/{directory_digest(checkpoint)}")
    version = tracking.register_checkpoint(local, model_name, metrics, {
        "checkpoint_uri": registered, "trained_uri": checkpoint, "evaluation_uri": evaluation,
        "pipeline_run_id": pipeline_run_id})
    return tracking.gate_champion(model_name, version.version, metric, pipeline_run_id, margin)


def deploy_step(model_name: str, settings: dict, output_root: str, pipeline_run_id: str, registry_root: str) -> dict:
    """Deploy the registry's champion of ``model_name`` with :class:`DeployConfig` ``settings``.

    The InferenceService is named after the registered model unless ``settings`` name it, so the
    recipes' pipelines (models ``sherlock``, ``sherlock-scl``, ``sherlock-stic``) serve side by side.
    """
    from sherlock.serving.deploy import DeployConfig, run_deploy

    overrides = {"name": model_name} | dict(settings) | {  # only registered checkpoints are deployed
        "model": f"models:/{model_name}@champion", "output": step_uri(output_root, pipeline_run_id, "deploy"),
        "checkpoint_roots": f"{registry_root.rstrip('/')}/"}
    return run_deploy(load_config(DeployConfig, overrides=overrides))


def evaluation_table_html(metrics: dict) -> str:
    """The evaluation's summary rows (:func:`sherlock.stages.evaluate.summary_rows`) as an HTML table."""
    import html

    from sherlock.stages.evaluate import summary_rows

    header, rows = summary_rows(metrics)
    head = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table border="1" cellpadding="4"><thead>{head}</thead><tbody>{body}</tbody></table>'


def evaluation_report(evaluation: str, name: str, model: str, html_path: str) -> dict[str, float]:
    """Write the KFP UI report of checkpoint ``name``'s evaluation (table, accuracy per round, loss curves).

    Returns the flat metrics (``<benchmark>/round_<k>``, the baselines) for the KFP ``Metrics`` artifact.
    """
    import base64
    import html

    from sherlock.plots import LOSS_PLOT
    from sherlock.stages.runner import METRICS_FILE, PLOT_FILE
    from sherlock.tracking import evaluation_metrics

    local, checkpoint = fetch(evaluation), fetch(model)
    metrics = json.loads((local / METRICS_FILE).read_text())

    def image(path: Path, title: str) -> str:
        if not path.is_file():
            return ""
        return f'<h3>{title}</h3><img src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}">'

    Path(html_path).write_text(
        f"<html><body><h2>{html.escape(name)}</h2><p>checkpoint: <code>{html.escape(model)}</code></p>"
        + evaluation_table_html(metrics)
        + image(local / PLOT_FILE, "accuracy per self-correction round")
        + image(checkpoint / LOSS_PLOT, "training loss") + "</body></html>")
    return evaluation_metrics(metrics)
