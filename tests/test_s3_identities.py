"""One S3 identity per workload, on SeaweedFS's real S3 gateway: the policy the chart renders, turned into
SeaweedFS's identity file by the command the gateway's init container runs, loaded by ``weed``; each
identity's allowed and refused operations; the admin key in no workload; the TLS mode and the probe path
of the manifests against the real server (docs/reliability.md, "Who may touch what in the store")."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from minio.error import S3Error
from servers import SeaweedServer, platform_policy

from sherlock.s3_identities import IdentityError, check_policy, seaweed_config
from sherlock.storage import S3Settings, Storage, StorageError, fetch
from tests.test_manifests import ROOT, helm_template, render

ADMIN_SECRET = "sherlock-s3-admin"


@pytest.fixture(scope="module")
def chart_policy() -> dict:
    (config_map,) = [d for d in helm_template() if d["kind"] == "ConfigMap"
                     and d["metadata"]["name"] == "sherlock-s3-identities"]
    return json.loads(config_map["data"]["identities.json"])


@pytest.fixture(scope="module")
def store(tmp_path_factory, chart_policy):
    """The chart's identities on a running gateway, buckets made by the admin, one object under runs/,
    one registered checkpoint and one MLflow artifact, written by the identities that write them."""
    server = SeaweedServer(tmp_path_factory.mktemp("identities"), policy=chart_policy)
    server.start()
    admin = server.client(server.admin)
    for bucket in ("sherlock", "sherlock-models", "mlflow"):
        admin.make_bucket(bucket)
    put(server.client("pipeline"), "sherlock", "runs/run-1/model/config.json")
    put(server.client("pipeline"), "sherlock-models", "sherlock/abc/config.json")
    put(server.client("mlflow"), "mlflow", "1/artifacts/metrics.json")
    yield server
    server.kill()


def put(client, bucket: str, key: str) -> str:
    client.put_object(bucket, key, io.BytesIO(b"{}"), 2)
    return key


def get(client, bucket: str, key: str) -> bytes:
    return client.get_object(bucket, key).read()


def listed(client, bucket: str, prefix: str = "") -> list[str]:
    return [item.object_name for item in client.list_objects(bucket, prefix, recursive=True)]


def refused(operation) -> bool:
    """Whether the gateway refused ``operation`` as not allowed (and not for another reason)."""
    try:
        operation()
    except S3Error as error:
        assert error.code == "AccessDenied", error
        return True
    return False


# (identity, what, operation, allowed)
MATRIX = [
    ("pipeline", "read a run's output", lambda c: get(c, "sherlock", "runs/run-1/model/config.json"), True),
    ("pipeline", "write under runs/", lambda c: put(c, "sherlock", "runs/run-2/x.json"), True),
    ("pipeline", "register a checkpoint", lambda c: put(c, "sherlock-models", "sherlock/def/x.json"), True),
    ("pipeline", "list the bucket", lambda c: listed(c, "sherlock"), True),
    ("pipeline", "write outside runs/", lambda c: put(c, "sherlock", "inputs/x.json"), False),
    ("pipeline", "read MLflow's bucket", lambda c: get(c, "mlflow", "1/artifacts/metrics.json"), False),
    ("pipeline", "write MLflow's bucket", lambda c: put(c, "mlflow", "1/artifacts/forged.json"), False),
    ("pipeline", "list MLflow's bucket", lambda c: listed(c, "mlflow"), False),
    ("pipeline", "make a bucket", lambda c: c.make_bucket("another"), False),
    ("trainjob", "read a run's output", lambda c: get(c, "sherlock", "runs/run-1/model/config.json"), True),
    ("trainjob", "write under runs/", lambda c: put(c, "sherlock", "runs/run-2/y.json"), True),
    ("trainjob", "write a registered checkpoint", lambda c: put(c, "sherlock-models", "sherlock/abc/x.json"),
     False),
    ("trainjob", "read MLflow's bucket", lambda c: get(c, "mlflow", "1/artifacts/metrics.json"), False),
    ("mlflow", "read its bucket", lambda c: get(c, "mlflow", "1/artifacts/metrics.json"), True),
    ("mlflow", "write its bucket", lambda c: put(c, "mlflow", "2/artifacts/model.json"), True),
    ("mlflow", "list its bucket", lambda c: listed(c, "mlflow"), True),
    ("mlflow", "read a checkpoint", lambda c: get(c, "sherlock-models", "sherlock/abc/config.json"), False),
    ("mlflow", "list the pipelines' bucket", lambda c: listed(c, "sherlock"), False),
    ("predictor", "read a registered checkpoint", lambda c: get(c, "sherlock-models", "sherlock/abc/config.json"),
     True),
    ("predictor", "list registered checkpoints", lambda c: listed(c, "sherlock-models"), True),
    ("predictor", "read a run's output", lambda c: get(c, "sherlock", "runs/run-1/model/config.json"), False),
    ("predictor", "list runs/", lambda c: listed(c, "sherlock", "runs/"), False),
    ("predictor", "list the whole bucket", lambda c: listed(c, "sherlock"), False),
    ("predictor", "overwrite a registered checkpoint",
     lambda c: put(c, "sherlock-models", "sherlock/abc/config.json"), False),
    ("predictor", "read MLflow's bucket", lambda c: get(c, "mlflow", "1/artifacts/metrics.json"), False),
]


@pytest.mark.parametrize("identity, what, operation, allowed", MATRIX, ids=[f"{i}: {w}" for i, w, _, _ in MATRIX])
def test_each_identity_may_do_what_its_workload_does_and_nothing_else(store, identity, what, operation, allowed):
    assert refused(lambda: operation(store.client(identity))) is not allowed, what


def test_only_the_admin_makes_buckets_and_the_pipeline_cannot_delete_one(store):
    assert not refused(lambda: store.client(store.admin).make_bucket("scratch"))
    for identity in ("pipeline", "trainjob", "mlflow", "predictor"):
        assert refused(lambda: store.client(identity).remove_bucket("scratch")), identity  # noqa: B023


def test_the_storage_layer_as_each_workload_uses_it(store, tmp_path, monkeypatch):
    """A step publishes and fetches under runs/ (server-side copies of kept versions included), cannot
    publish into MLflow's bucket; the predictor fetches a registered checkpoint; wrong keys are named."""
    monkeypatch.setenv("SHERLOCK_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "model"
    source.mkdir()
    (source / "config.json").write_text("{}")

    def storage(identity: str, **settings) -> Storage:
        access, secret = store.keys[identity]
        return Storage(S3Settings(endpoint=store.url, access_key=access, secret_key=secret, region="us-east-1",
                                  **settings), retries=0)

    storage("pipeline").upload_dir(source, "s3://sherlock/runs/run-3/model")
    (source / "config.json").write_text('{"v": 2}')
    storage("pipeline").upload_dir(source, "s3://sherlock/runs/run-3/model")  # keeps v1 beside it: a copy
    storage("pipeline").copy_dir("s3://sherlock/runs/run-3/model", "s3://sherlock-models/sherlock/v2",
                                 storage("pipeline").manifest("s3://sherlock/runs/run-3/model"))
    assert (fetch("s3://sherlock-models/sherlock/v2", storage("predictor")) / "config.json").read_text() == '{"v": 2}'
    with pytest.raises(StorageError, match="refused the credentials"):
        storage("pipeline").upload_dir(source, "s3://mlflow/forged")
    with pytest.raises(StorageError, match="refused the credentials"):
        fetch("s3://sherlock/runs/run-3/model", storage("predictor"))
    store.keys["stranger"] = ("STRANGER000000000000", "x" * 40)
    with pytest.raises(StorageError, match="refused the credentials"):
        storage("stranger").exists("s3://sherlock/runs/run-3/model/config.json")


def test_kserve_storage_initializer_reads_the_served_checkpoint_with_the_predictors_identity(store, tmp_path,
                                                                                           monkeypatch):
    """What KServe's storage initializer runs (``kserve_storage.Storage.download``), with the environment
    KServe derives from the predictor's Secret and its ``serving.kserve.io/s3-*`` annotations
    (docs/cluster.md): a registered checkpoint downloads; a run's output does not."""
    from kserve_storage import Storage as KServeStorage

    access, secret = store.keys["predictor"]
    for name, value in {"AWS_ENDPOINT_URL": store.url, "AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret,
                        "AWS_DEFAULT_REGION": "us-east-1", "S3_VERIFY_SSL": "0"}.items():
        monkeypatch.setenv(name, value)
    target = KServeStorage.download("s3://sherlock-models/sherlock/abc", str(tmp_path / "served"))
    assert (Path(target) / "config.json").read_bytes() == b"{}"
    with pytest.raises(RuntimeError, match=r"S3 error \[403\]: Forbidden"):
        KServeStorage.download("s3://sherlock/runs/run-1/model", str(tmp_path / "not-served"))
    assert not list((tmp_path / "not-served").rglob("config.json"))


@pytest.mark.parametrize("overlay", ("base", "chart"))
def test_the_admin_key_is_in_no_workloads_environment(overlay):
    """The admin Secret reaches the bucket Job (its environment) and the gateway's init container (which
    writes every identity into SeaweedFS's file), nothing else; each other workload holds its own identity."""
    holders: dict[str, set[str]] = {}
    for document in render(overlay):
        if document["kind"] not in ("Deployment", "StatefulSet", "Job", "ServingRuntime"):
            continue
        pod = document["spec"] if document["kind"] == "ServingRuntime" else document["spec"]["template"]["spec"]
        text = json.dumps(pod)
        for identity in ("sherlock-s3-admin", "sherlock-s3", "sherlock-s3-trainjob", "sherlock-s3-mlflow",
                         "sherlock-s3-predictor"):
            if f'"{identity}"' in text:
                holders.setdefault(identity, set()).add(document["metadata"]["name"])
    assert holders[ADMIN_SECRET] == {"sherlock-buckets", "sherlock-seaweedfs"}
    assert holders["sherlock-s3-mlflow"] == {"sherlock-mlflow", "sherlock-seaweedfs"}
    serving = {d["metadata"]["name"]: d for d in render(overlay) if d["kind"] == "ServiceAccount"}["sherlock-serving"]
    assert serving["secrets"] == [{"name": "sherlock-s3-predictor"}]


def test_the_compiled_pipelines_and_trainjob_policy_hold_no_admin_or_foreign_key():
    for compiled in sorted((ROOT / "pipelines").glob("*.yaml")):
        text = compiled.read_text()
        assert "sherlock-s3" in text and ADMIN_SECRET not in text and "sherlock-s3-mlflow" not in text, compiled
        assert "sherlock-s3-predictor" not in text, compiled
    policy = next(yaml.safe_load_all((ROOT / "manifests" / "cluster-policy" / "trainjob-policy.yaml").read_text()))
    (secrets,) = [v["expression"] for v in policy["spec"]["variables"] if v["name"] == "secrets"]
    assert yaml.safe_load(secrets) == ["sherlock-s3-trainjob", "sherlock-mlflow"]


def test_the_rendered_policies_agree_and_the_gateway_answers_the_probe_path(store, chart_policy):
    """The kustomize base's policy is the chart's; the StatefulSet's probe path answers on the gateway."""
    import urllib.request

    assert platform_policy() == chart_policy
    (statefulset,) = [d for d in render("base") if d["kind"] == "StatefulSet"
                      and d["metadata"]["name"] == "sherlock-seaweedfs"]
    path = statefulset["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"]
    assert urllib.request.urlopen(f"{store.url}{path}", timeout=10).status == 200


def test_in_tls_mode_the_gateway_speaks_https_only(tmp_path):
    """The manifests' TLS mode (the certificate on the S3 port itself, tests/test_manifests.py) on the real
    gateway: HTTPS with the CA round-trips, plain HTTP on the same port gets no S3 answer."""
    import urllib.error
    import urllib.request

    server = SeaweedServer(tmp_path / "tls-store", https_only=True)
    server.start()
    try:
        client = server.client("pipeline")
        server.client(server.admin).make_bucket("sherlock")
        assert get(client, "sherlock", put(client, "sherlock", "runs/r/x.json")) == b"{}"
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)) as error:
            urllib.request.urlopen(f"http://127.0.0.1:{server.ports['s3']}/sherlock/runs/r/x.json", timeout=10)
        assert not isinstance(error.value, urllib.error.HTTPError) or error.value.code == 400
    finally:
        server.kill()


def policy(*identities: dict) -> dict:
    return {"identities": list(identities)}


ADMIN = {"name": "admin", "secret": "sherlock-s3-admin", "actions": ["Admin"]}


@pytest.mark.parametrize("bad, message", [
    (policy({"name": "a", "secret": "s", "actions": ["Read"]}, ADMIN), "'Read' reaches every bucket"),
    (policy(ADMIN, dict(ADMIN, name="root", secret="root")), "exactly one identity may hold the unlimited Admin"),
    (policy({"name": "a", "secret": "s", "actions": ["Write:sherlock/runs"]}, ADMIN), "is not VERB"),
    (policy({"name": "a", "secret": "s", "actions": ["Read:sherlock/../mlflow/*"]}, ADMIN), "is not VERB"),
    (policy({"name": "a", "secret": "s", "actions": ["Delete:sherlock"]}, ADMIN), "is not VERB"),
    (policy({"name": "a", "secret": "sherlock-s3-admin", "actions": ["Read:x1y"]}, ADMIN), "one per identity"),
    (policy({"name": "A", "secret": "s", "actions": ["Read:x1y"]}, ADMIN), "not a new lowercase DNS label"),
    (policy({"name": "a", "secret": "s", "actions": []}, ADMIN), "non-empty list of actions"),
    (policy({"name": "a", "secret": "s", "actions": ["Read:x1y"], "extra": 1}, ADMIN), "exactly the fields"),
    ({"identities": []}, "non-empty list"),
])
def test_a_bad_policy_is_refused_with_where_and_why(bad, message):
    with pytest.raises(IdentityError, match=message):
        check_policy(bad)


def test_missing_malformed_and_shared_keys_are_refused(tmp_path):
    keys = tmp_path / "keys"
    two = policy(ADMIN, {"name": "reader", "secret": "sherlock-s3-reader", "actions": ["Read:sherlock"]})
    with pytest.raises(IdentityError, match=r"admin: .*AWS_ACCESS_KEY_ID is missing"):
        seaweed_config(two, keys)
    for name in ("admin", "reader"):
        (keys / name).mkdir(parents=True)
        (keys / name / "AWS_ACCESS_KEY_ID").write_text(f"{name.upper():0<20}")
        (keys / name / "AWS_SECRET_ACCESS_KEY").write_text("s" * 40)
    with pytest.raises(IdentityError, match="identities admin and reader share a key"):
        seaweed_config(two, keys)
    (keys / "reader" / "AWS_SECRET_ACCESS_KEY").write_text("short")
    with pytest.raises(IdentityError, match="reader: AWS_SECRET_ACCESS_KEY must be at least 32"):
        seaweed_config(two, keys)
    (keys / "reader" / "AWS_SECRET_ACCESS_KEY").write_text("r" * 40 + "\n")
    config = seaweed_config(two, keys)
    assert [i["credentials"][0]["secretKey"] for i in config["identities"]] == ["s" * 40, "r" * 40]


def test_the_command_writes_a_file_only_its_owner_reads_and_fails_with_the_reason(tmp_path):
    keys, policy_file = tmp_path / "keys", tmp_path / "identities.json"
    policy_file.write_text(json.dumps(platform_policy()))
    command = [str(Path(sys.executable).parent / "sherlock"), "s3-identities", "--policy", str(policy_file),
               "--keys", str(keys), "--output", str(tmp_path / "s3.json")]
    failed = subprocess.run(command, capture_output=True, text=True)
    assert failed.returncode != 0 and "identity admin:" in failed.stderr and "missing" in failed.stderr
    for number, identity in enumerate(platform_policy()["identities"]):
        (keys / identity["name"]).mkdir(parents=True)
        (keys / identity["name"] / "AWS_ACCESS_KEY_ID").write_text(f"KEY{number:0>17}")
        (keys / identity["name"] / "AWS_SECRET_ACCESS_KEY").write_text(f"{number}" * 40)
    subprocess.run(command, check=True, capture_output=True)
    assert (tmp_path / "s3.json").stat().st_mode & 0o777 == 0o600
    written = json.loads((tmp_path / "s3.json").read_text())
    assert [i["name"] for i in written["identities"]] == ["admin", "pipeline", "trainjob", "mlflow", "predictor"]
