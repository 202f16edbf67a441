"""MLflow lineage and registry against a real `mlflow server` with MLflow's auth app whose artifacts live on
a real S3 endpoint: the steps run as the non-admin pipeline user that `sherlock mlflow-access` makes."""

import base64
import json

import mlflow
import pandas as pd
import pytest
import requests
from mlflow.exceptions import MlflowException
from servers import start_mlflow_server

from sherlock import tracking
from sherlock.data.llava_cot import load_llava_cot
from sherlock.data.sampling import verify_subset
from sherlock.data.synthetic import generate_synthetic
from sherlock.mlflow_access import PIPELINE_PASSWORD_ENV, READER_PASSWORD_ENV, AccessConfig, grant_access
from sherlock.stages.evaluate import EvaluateConfig
from sherlock.stages.runner import data_digest, run_stage
from sherlock.stages.sample import SampleConfig
from sherlock.stages.sft import SFTStageConfig
from sherlock.storage import fetch, publish

MODEL = "sherlock-tiny"
PIPELINE_RUN = "kfp-run-0001"


PASSWORDS = {"sherlock-pipeline": "pipeline-password-0001", "sherlock-reader": "reader-password-0001"}


def log_in(monkeypatch, user: str, password: str) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)


@pytest.fixture
def mlflow_server(bucket, tmp_path, monkeypatch, s3_env):
    """The platform's MLflow after its access Job ran; this process is logged in as the pipeline user."""
    server = start_mlflow_server(tmp_path, s3_env, bucket)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    monkeypatch.setenv("SHERLOCK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(PIPELINE_PASSWORD_ENV, PASSWORDS["sherlock-pipeline"])
    monkeypatch.setenv(READER_PASSWORD_ENV, PASSWORDS["sherlock-reader"])
    log_in(monkeypatch, "admin", server.admin_password)
    grant_access(AccessConfig(models=MODEL))
    log_in(monkeypatch, "sherlock-pipeline", PASSWORDS["sherlock-pipeline"])
    yield server
    server.stop()


def test_micro_pipeline_lineage_from_champion_back_to_records(mlflow_server, bucket, tiny_model_dir, tmp_path):
    root = f"s3://{bucket}/{PIPELINE_RUN}"
    publish(generate_synthetic(tmp_path / "synth", 40, seed=0).parent, f"s3://{bucket}/data/synth")
    publish(generate_synthetic(tmp_path / "heldout", 8, seed=1).parent, f"s3://{bucket}/data/heldout")
    publish(tiny_model_dir, f"s3://{bucket}/models/base")

    run_stage("sample", SampleConfig(data=f"s3://{bucket}/data/synth", data_file="data.jsonl",
                                     output=f"{root}/subsets", sizes="D_A=12,D_B=4"), PIPELINE_RUN)
    run_stage("sft", SFTStageConfig(model=f"s3://{bucket}/models/base", data=f"{root}/subsets/D_A",
                                    output=f"{root}/r0", max_steps=3, batch_size=4, logging_steps=1), PIPELINE_RUN)
    metrics = run_stage("evaluate", EvaluateConfig(
        model=f"{root}/r0", benchmarks=f"llava_cot=s3://{bucket}/data/heldout/data.jsonl", output=f"{root}/eval_r0",
        correction_rounds=1, max_new_tokens=8, prior_data=f"{root}/subsets/D_A"), PIPELINE_RUN)

    eval_metrics = tracking.evaluation_metrics(metrics)
    assert {"llava_cot/round_0", "llava_cot/round_1", "llava_cot/greedy_direct", "llava_cot/blank_image",
            "llava_cot/blind_prior", "llava_cot/sc_minus_direct",
            "llava_cot/perception/cells_exact"} <= set(eval_metrics)
    assert all(not key.startswith("llava_cot/round_") or key[-1] in "01" for key in eval_metrics)
    version = tracking.register_checkpoint(fetch(f"{root}/r0"), MODEL, eval_metrics,
                                           {"checkpoint_uri": f"{root}/r0", "pipeline_run_id": PIPELINE_RUN})
    assert tracking.gate_champion(MODEL, version.version, "llava_cot/round_1", PIPELINE_RUN)["promoted"]

    # every stage is a nested run of the pipeline's parent run, with params, metrics and artifacts
    client = mlflow.MlflowClient()
    parent = tracking.pipeline_run(PIPELINE_RUN)
    stages = {r.data.tags["sherlock.stage"]: r for r in mlflow.search_runs(
        filter_string=f"tags.`mlflow.parentRunId` = '{parent}'", output_format="list", search_all_experiments=True)}
    assert set(stages) == {"sample", "sft", "evaluate"}
    assert client.get_run(parent).data.tags["sherlock.git_commit"] != ""
    assert client.get_run(parent).info.status == "FINISHED"  # no stage of the pipeline is running
    assert stages["sft"].data.params["max_steps"] == "3" and "loss" in stages["sft"].data.metrics
    assert [m.step for m in client.get_metric_history(stages["sft"].info.run_id, "loss")] == [1, 2, 3]
    round_1 = metrics["benchmarks"]["llava_cot"]["rounds"][1]["score"]
    assert stages["evaluate"].data.metrics["llava_cot/round_1"] == round_1
    sft_artifacts = {a.path for a in client.list_artifacts(stages["sft"].info.run_id)}
    assert {"loss_curves.png", "stage_config.yaml"} <= sft_artifacts
    assert "results.md" in {a.path for a in client.list_artifacts(stages["evaluate"].info.run_id)}

    # walk back: champion → version → run → dataset digest → sample manifest → the exact records
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert str(champion.version) == str(version.version) and champion.tags["pipeline_run_id"] == PIPELINE_RUN
    assert float(champion.tags["eval.llava_cot/round_0"]) == eval_metrics["llava_cot/round_0"]
    assert (champion.tags["self_correction.correction"], champion.tags["self_correction.response_format"]) == (
        "prompt", "stages")  # R0 was trained on plain data: it is served with Sherlock's rounds
    training_run = client.get_run(champion.run_id)
    assert training_run.info.run_id == stages["sft"].info.run_id
    (dataset,) = [d.dataset for d in training_run.inputs.dataset_inputs if d.dataset.name == "data"]  # the field
    subset_uri = json.loads(dataset.source)["uri"]
    assert subset_uri == f"{root}/subsets/D_A"
    assert data_digest(fetch(subset_uri)).startswith(dataset.digest)
    assert champion.tags["data.data.digest"] == dataset.digest and champion.tags["data.data.source"] == subset_uri
    subsets = fetch(subset_uri.rsplit("/", 1)[0])
    records = verify_subset(subsets, "D_A").records  # every record and image hash checked
    manifest = json.loads((subsets / "manifest.json").read_text())
    assert [r.id for r in records] == [e["id"] for e in manifest["subsets"]["D_A"]] and len(records) == 12

    # the registered model loads from the S3-backed registry and answers; its checkpoint is the trained one
    checkpoint = tracking.download_checkpoint(f"models:/{MODEL}@champion")
    assert (checkpoint / "model.safetensors").read_bytes() == (fetch(f"{root}/r0") / "model.safetensors").read_bytes()
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    heldout = load_llava_cot(tmp_path / "heldout" / "data.jsonl")
    image = (heldout.image_root / heldout.records[0].image).read_bytes()
    answer = model.predict(pd.DataFrame({"question": [heldout.records[0].question],
                                         "image": [base64.b64encode(image).decode()]}),
                           params={"self_correction_rounds": 1, "max_new_tokens": 8})
    assert len(answer) == 1 and len(answer[0]["responses"]) == 2


def test_mlflow_refuses_anonymous_and_ungranted_writes_and_the_gate_foreign_versions(mlflow_server, monkeypatch):
    """MLflow's auth app as the platform configures it: anonymous calls get 401; a user without grants
    gets 403 on the registry; the reader reads; the pipeline user registers and gates; the gate refuses
    a version that this pipeline run did not register, whoever could write it."""
    from mlflow.server import get_app_client

    api = f"{mlflow_server.url}/api/2.0/mlflow"
    for path, body in (("experiments/create", {"name": "anonymous"}),
                       ("model-versions/create", {"name": MODEL, "source": "https://attacker.invalid/evil-model"}),
                       ("registered-models/alias", {"name": MODEL, "alias": "champion", "version": "1"})):
        assert requests.post(f"{api}/{path}", json=body, timeout=30).status_code == 401, path
    assert requests.get(f"{api}/registered-models/alias", params={"name": MODEL, "alias": "champion"},
                        timeout=30).status_code == 401

    client = mlflow.MlflowClient()  # the pipeline user

    def register(pipeline_run: str, score: float) -> str:
        with tracking.stage_run("sft", SampleConfig(data="d", output="o"), pipeline_run) as run:
            pass
        return client.create_model_version(MODEL, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id,
                                           tags={"pipeline_run_id": pipeline_run, "eval.acc": str(score)}).version

    ours, foreign = register(PIPELINE_RUN, 50.0), register("kfp-run-0002", 99.0)
    assert tracking.gate_champion(MODEL, ours, "acc", PIPELINE_RUN)["promoted"]
    with pytest.raises(tracking.ProvenanceError, match="not registered by pipeline run 'kfp-run-0001'"):
        tracking.gate_champion(MODEL, foreign, "acc", PIPELINE_RUN)

    log_in(monkeypatch, "admin", mlflow_server.admin_password)
    get_app_client("basic-auth", tracking_uri=mlflow_server.url).create_user("intruder", "intruder-password-1")
    by_hand = client.create_model_version(MODEL, "s3://sherlock/elsewhere", tags={
        "pipeline_run_id": PIPELINE_RUN, "eval.acc": "100"}).version  # right tag, but no stage run logged it
    log_in(monkeypatch, "sherlock-pipeline", PASSWORDS["sherlock-pipeline"])
    with pytest.raises(tracking.ProvenanceError, match="names no run"):
        tracking.gate_champion(MODEL, by_hand, "acc", PIPELINE_RUN)

    log_in(monkeypatch, "intruder", "intruder-password-1")
    for write in (lambda: client.set_registered_model_alias(MODEL, "champion", foreign),
                  lambda: client.set_model_version_tag(MODEL, ours, "eval.acc", "0"),
                  lambda: client.create_model_version(MODEL, "https://attacker.invalid/evil-model"),
                  lambda: client.get_model_version_by_alias(MODEL, "champion")):
        with pytest.raises(MlflowException, match="403"):
            write()
    log_in(monkeypatch, "sherlock-reader", PASSWORDS["sherlock-reader"])
    assert client.get_model_version_by_alias(MODEL, "champion").version == ours
    with pytest.raises(MlflowException, match="403"):
        client.set_registered_model_alias(MODEL, "champion", foreign)


def test_champion_moves_only_for_a_better_challenger(tiny_model_dir, tmp_path, monkeypatch):
    """The gate on the embedded default's backend: local sqlite, artifacts on disk."""
    import shutil

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.create_experiment("sherlock", artifact_location=(tmp_path / "artifacts").as_uri())
    checkpoint = shutil.copytree(tiny_model_dir, tmp_path / "checkpoint")

    def arrive(score):
        with tracking.stage_run("sft", SampleConfig(data="d", output="o"), "kfp-run-gate") as run:
            tracking.write_run_file(run, checkpoint)
        version = tracking.register_checkpoint(checkpoint, "gate-model", {"acc": score},
                                               {"pipeline_run_id": "kfp-run-gate"})
        return tracking.gate_champion("gate-model", version.version, "acc", "kfp-run-gate", margin=1.0)

    client = mlflow.MlflowClient()
    assert arrive(40.0)["promoted"]
    worse = arrive(39.0)
    assert not worse["promoted"] and worse["champion_score"] == 40.0
    assert not arrive(40.5)["promoted"]  # better, but within the margin
    assert str(client.get_model_version_by_alias("gate-model", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("gate-model", "challenger").version) == "3"
    assert arrive(45.0)["promoted"]
    assert str(client.get_model_version_by_alias("gate-model", "champion").version) == "4"
    assert json.loads(client.get_model_version("gate-model", "2").tags["gate.decision"])["promoted"] is False
    with pytest.raises(KeyError, match="no tag eval.f1"):
        tracking.gate_champion("gate-model", "4", "f1", "kfp-run-gate")
    with mlflow.start_run() as run:  # a run outside any pipeline run
        tracking.write_run_file(run, checkpoint)
    stray = tracking.register_checkpoint(checkpoint, "gate-model", {"acc": 99.0}, {"pipeline_run_id": "kfp-run-gate"})
    with pytest.raises(tracking.ProvenanceError, match="not a stage run of pipeline run 'kfp-run-gate'"):
        tracking.gate_champion("gate-model", stray.version, "acc", "kfp-run-gate")


def test_pipeline_run_follows_its_stages_and_datasets_have_absolute_sources(tmp_path, monkeypatch):
    """The parent run is RUNNING while a stage runs, FINISHED when none does, FAILED for good after a
    failure; a data set typed as a relative path is logged with an absolute file URI, named by its field."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "subsets" / "D_A").mkdir(parents=True)
    client = mlflow.MlflowClient()
    config = SampleConfig(data="data", output="out")

    with tracking.stage_run("sample", config, "kfp-run-2") as run:
        parent = run.data.tags["mlflow.parentRunId"]
        assert client.get_run(parent).info.status == "RUNNING"
        tracking.log_data_input("subsets/D_A", "ab" * 32, field="data")
    assert client.get_run(parent).info.status == "FINISHED"
    (dataset,) = client.get_run(run.info.run_id).inputs.dataset_inputs
    assert dataset.dataset.name == "data"
    assert json.loads(dataset.dataset.source)["uri"] == (tmp_path / "subsets" / "D_A").resolve().as_uri()

    with pytest.raises(RuntimeError):
        with tracking.stage_run("sft", config, "kfp-run-2"):
            raise RuntimeError("out of memory")
    assert client.get_run(parent).info.status == "FAILED"
    with tracking.stage_run("evaluate", config, "kfp-run-2"):
        pass
    assert client.get_run(parent).info.status == "FAILED"  # a later stage does not hide the failure


def test_a_registered_checkpoint_changed_in_the_artifact_store_is_refused(tiny_model_dir, tmp_path, monkeypatch):
    """``download_checkpoint`` (what ``sherlock serve --model models:/…`` loads) checks the version's digest."""
    import shutil

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.create_experiment("sherlock", artifact_location=(tmp_path / "artifacts").as_uri())
    checkpoint = shutil.copytree(tiny_model_dir, tmp_path / "checkpoint")
    with tracking.stage_run("sft", SampleConfig(data="d", output="o"), "kfp-run-digest") as run:
        tracking.write_run_file(run, checkpoint)
    version = tracking.register_checkpoint(checkpoint, "digest-model", {}, {"pipeline_run_id": "kfp-run-digest"})
    assert version.tags[tracking.DIGEST_TAG] == tracking.directory_digest(checkpoint)
    assert tracking.download_checkpoint("models:/digest-model/1").is_dir()
    (stored,) = (tmp_path / "artifacts").glob("**/artifacts/checkpoint/model.safetensors")
    stored.write_bytes(stored.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(tracking.CheckpointMismatchError, match="not the checkpoint registered as version 1"):
        tracking.download_checkpoint("models:/digest-model@challenger")
