"""The storage layer against SeaweedFS's real S3 gateway, with faults injected into the server itself:
SIGKILLed during an upload and during a download, restarted or left down; a re-upload cut short over
a complete version. Nothing corrupt is served, nothing half-published is visible, the previous
version survives (docs/reliability.md). The server runs the platform's identities; the steps' own
(``pipeline``) writes under ``runs/`` as a pipeline step does."""

import os
import threading
import time

import pytest
from servers import SeaweedServer

from sherlock.storage import MANIFEST_FILE, Storage, StorageError, fetch, previous_version_uri, sums_digest

BIG = 48 * 1024 * 1024  # three multipart parts: the kill lands inside this object's transfer


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory):
    server = SeaweedServer(tmp_path_factory.mktemp("seaweed"))
    server.start()
    server.client(server.admin).make_bucket("sherlock")  # the bucket Job's work
    yield server
    if server.process.poll() is None:
        server.kill()


@pytest.fixture
def weed_root(seaweed, monkeypatch, tmp_path, request):
    """A fresh prefix under ``s3://sherlock/runs/`` on the (running) SeaweedFS, the pipeline identity's
    keys in the environment, a fresh cache."""
    if seaweed.process.poll() is not None:
        seaweed.start()
    for name, value in seaweed.env("pipeline").items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SHERLOCK_CACHE", str(tmp_path / "cache"))
    return f"s3://sherlock/runs/{request.node.name}"


def version(root, tag: str):
    """A checkpoint-like directory: config.json goes up first, then a 48 MiB model, then a file only
    this version has."""
    root.mkdir(parents=True)
    (root / "config.json").write_text(f'{{"version": "{tag}"}}')
    (root / "model.safetensors").write_bytes(os.urandom(BIG))
    (root / f"only-{tag}.txt").write_text(tag)
    return root


def files(root) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and p.name != MANIFEST_FILE}


def kill_during_second_transfer(storage: Storage, method: str, server: SeaweedServer, restart: bool) -> list[str]:
    """Wrap ``storage.<method>`` so the server is SIGKILLed 0.05 s into the second object's transfer
    (and, with ``restart``, started again on the same data); the cut call returns once the kill (and
    restart) is done. Returns a log of what happened."""
    original, events = getattr(storage, method), []

    def chaos():
        time.sleep(0.05)
        server.kill()
        events.append("killed")
        if restart:
            server.start()
            events.append("restarted")

    def wrapped(*args, **kwargs):
        cut = None
        if len(events) == 1:  # the first object is through: the next one is cut
            events.append("cutting")
            cut = threading.Thread(target=chaos, daemon=True)
            cut.start()
        try:
            result = original(*args, **kwargs)
        finally:
            if cut is not None:  # a retry may get through before start() has seen the server ready
                cut.join()
        if not events:
            events.append("first done")
        return result

    setattr(storage, method, wrapped)
    return events


def patient() -> Storage:
    """Retries spanning ~30 s: long enough for SeaweedFS to restart and elect its master."""
    return Storage(retries=6, backoff=0.5)


def test_an_upload_cut_by_a_server_kill_completes_after_the_restart(seaweed, weed_root, tmp_path):
    uri = f"{weed_root}/run/model"
    source = version(tmp_path / "v1", "v1")
    storage = patient()
    events = kill_during_second_transfer(storage, "upload_file", seaweed, restart=True)
    storage.upload_dir(source, uri)
    assert events[:3] == ["first done", "cutting", "killed"] and "restarted" in events
    assert files(fetch(uri, Storage())) == files(source)


def test_a_re_upload_cut_short_never_destroys_the_previous_version(seaweed, weed_root, tmp_path):
    uri = f"{weed_root}/run/model"
    first, second = version(tmp_path / "v1", "v1"), version(tmp_path / "v2", "v2")
    Storage().upload_dir(first, uri)
    kept = previous_version_uri(uri, sums_digest(Storage().manifest(uri)))

    storage = Storage(retries=1, backoff=0.1)
    events = kill_during_second_transfer(storage, "upload_file", seaweed, restart=False)
    with pytest.raises(StorageError):
        storage.upload_dir(second, uri)
    assert events == ["first done", "cutting", "killed"]
    seaweed.start()

    with pytest.raises(StorageError, match=f"has no {MANIFEST_FILE}"):  # half-published: refused, not served
        fetch(uri, Storage())
    assert files(fetch(kept, Storage())) == files(first)  # the previous complete version, whole

    Storage().upload_dir(second, uri)  # the retried upload
    assert files(fetch(uri, Storage())) == files(second)
    assert sorted(Storage().list_names(uri)) == sorted([*files(second), MANIFEST_FILE])  # v1's own file is gone
    assert files(fetch(kept, Storage())) == files(first)
    Storage().upload_dir(second, uri)  # the same contents again: nothing moves, no third version
    kept_name = kept.rsplit("/", 1)[1]
    assert set(Storage().list_names(f"{weed_root}/run")) == (
        {f"model/{name}" for name in [*files(second), MANIFEST_FILE]}
        | {f"{kept_name}/{name}" for name in [*files(first), MANIFEST_FILE]})


def test_a_download_cut_by_a_server_kill_is_retried_or_refused_never_served_partial(seaweed, weed_root, tmp_path,
                                                                                      monkeypatch):
    uri = f"{weed_root}/run/model"
    source = version(tmp_path / "v1", "v1")
    Storage().upload_dir(source, uri)

    storage = patient()
    events = kill_during_second_transfer(storage, "download_file", seaweed, restart=True)
    assert files(fetch(uri, storage)) == files(source)
    assert "restarted" in events

    monkeypatch.setenv("SHERLOCK_CACHE", str(tmp_path / "cache-2"))
    storage = Storage(retries=1, backoff=0.1)
    events = kill_during_second_transfer(storage, "download_file", seaweed, restart=False)
    with pytest.raises(StorageError):
        fetch(uri, storage)
    assert events == ["first done", "cutting", "killed"]
    seaweed.start()
    assert files(fetch(uri, Storage())) == files(source)  # the partial copy was not reused: all re-checked


def test_over_tls_the_store_is_verified_against_the_configured_ca(seaweed, weed_root, tmp_path, monkeypatch):
    """The store with TLS (the chart's seaweedfs.tls) seen from a client: HTTPS with the platform's CA bundle
    (AWS_CA_BUNDLE) round-trips a checkpoint; without that CA the server is not trusted, and nothing is
    downloaded."""
    uri = f"{weed_root}/run/model"
    source = version(tmp_path / "v1", "v1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", seaweed.https_url)
    monkeypatch.setenv("AWS_CA_BUNDLE", str(seaweed.ca_file))
    Storage().upload_dir(source, uri)
    assert files(fetch(uri)) == files(source)
    monkeypatch.delenv("AWS_CA_BUNDLE")  # the public CAs only
    monkeypatch.setenv("SHERLOCK_CACHE", str(tmp_path / "other-cache"))
    with pytest.raises(StorageError, match="CERTIFICATE_VERIFY_FAILED"):
        fetch(uri, Storage(retries=0))
    assert not list((tmp_path / "other-cache").rglob("model.safetensors"))
