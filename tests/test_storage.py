"""The URI layer against a real HTTP S3 endpoint (moto's server, authentication on)."""

import os
import shutil
import subprocess
import sys

import pytest
from servers import FaultyProxy

from sherlock.storage import (
    MANIFEST_FILE,
    IntegrityError,
    S3Settings,
    Storage,
    StorageError,
    copy_published,
    fetch,
    publish,
    split_s3_uri,
)

BIG = 20 * 1024 * 1024  # over the 16 MiB part size: goes up as a two-part multipart upload


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "tree"
    (root / "nested" / "deeper").mkdir(parents=True)
    (root / "big.bin").write_bytes(os.urandom(BIG))
    (root / "config.json").write_text('{"a": 1}')
    (root / "nested" / "deeper" / "image.png").write_bytes(os.urandom(3000))
    return root


def same_tree(left, right):
    files = sorted(p.relative_to(left) for p in left.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(right) for p in right.rglob("*") if p.is_file())
    for name in files:
        assert (left / name).read_bytes() == (right / name).read_bytes(), name


def test_directory_round_trip_with_multipart(tree, bucket, tmp_path):
    storage = Storage()
    uri = f"s3://{bucket}/runs/1/model"
    sums = storage.upload_dir(tree, uri)
    assert set(sums) == {"big.bin", "config.json", "nested/deeper/image.png"}
    etag = storage.client.stat_object(bucket, "runs/1/model/big.bin").etag
    assert etag.endswith("-2"), f"expected a 2-part multipart ETag, got {etag}"
    back = storage.download_dir(uri, tmp_path / "back")
    same_tree(tree, back)
    # the manifest is sha256sum's format: coreutils can check the downloaded copy
    subprocess.run(["sha256sum", "--check", "--quiet", MANIFEST_FILE], cwd=back, check=True)


def test_transient_failure_mid_transfer_is_retried(tree, bucket, s3_env, tmp_path, capsys):
    port = int(s3_env.url.rsplit(":", 1)[1])
    proxy = FaultyProxy(port, cut_after=BIG // 2)
    try:
        settings = S3Settings.from_env()
        settings.endpoint = f"http://127.0.0.1:{proxy.port}"
        storage = Storage(settings, backoff=0.05)
        storage.upload_dir(tree, f"s3://{bucket}/flaky")
        assert proxy.cuts == 1
        assert "retry 1/" in capsys.readouterr().out
        same_tree(tree, Storage().download_dir(f"s3://{bucket}/flaky", tmp_path / "back"))
    finally:
        proxy.close()


def test_without_retries_the_same_cut_fails(tree, bucket, s3_env):
    port = int(s3_env.url.rsplit(":", 1)[1])
    proxy = FaultyProxy(port, cut_after=BIG // 2)
    try:
        settings = S3Settings.from_env()
        settings.endpoint = f"http://127.0.0.1:{proxy.port}"
        with pytest.raises(StorageError, match="failed after 1 attempts"):
            Storage(settings, retries=0).upload_dir(tree, f"s3://{bucket}/flaky")
    finally:
        proxy.close()


def test_bad_credentials_and_missing_bucket_are_named(tree, bucket, s3_env):
    settings = S3Settings.from_env()
    settings.secret_key = "not-the-secret"
    with pytest.raises(StorageError, match="refused the credentials.*AWS_SECRET_ACCESS_KEY"):
        Storage(settings).upload_dir(tree, f"s3://{bucket}/x")
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist"):
        Storage().upload_dir(tree, "s3://no-such-bucket/x")
    with pytest.raises(StorageError, match="no SHA256SUMS"):
        Storage().download_dir(f"s3://{bucket}/never-written", tree.parent / "y")


def test_corrupted_download_fails_the_integrity_check(tree, bucket, tmp_path):
    storage = Storage()
    storage.upload_dir(tree, f"s3://{bucket}/model")
    tampered = tmp_path / "tampered"
    tampered.write_text('{"a": 2}')
    storage.client.fput_object(bucket, "model/config.json", str(tampered))
    with pytest.raises(IntegrityError, match="config.json"):
        storage.download_dir(f"s3://{bucket}/model", tmp_path / "back")
    assert not (tmp_path / "back" / "config.json").exists()


def test_fetch_caches_directories_and_checks_single_files(tree, bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("SHERLOCK_CACHE", str(tmp_path / "cache"))
    uri = publish(tree, f"s3://{bucket}/data/subset")
    local = fetch(uri)
    same_tree(tree, local)
    stamp = (local / "big.bin").stat().st_mtime_ns
    assert fetch(uri) == local and (local / "big.bin").stat().st_mtime_ns == stamp  # unchanged: not downloaded again
    (tree / "config.json").write_text('{"a": 3}')
    publish(tree, uri)
    assert (fetch(uri) / "config.json").read_text() == '{"a": 3}'  # changed remotely: downloaded again
    assert fetch(f"{uri}/config.json").read_text() == '{"a": 3}'
    bucket_name, _ = split_s3_uri(uri)
    Storage().client.fput_object(bucket_name, "data/subset/config.json", str(tree / "big.bin"))
    with pytest.raises(IntegrityError):
        fetch(f"{uri}/config.json")
    with pytest.raises(FileNotFoundError, match="nothing at"):
        fetch(f"s3://{bucket}/data/missing")
    assert fetch(tree) == tree  # local paths pass through


def test_publish_to_a_local_path_writes_a_manifest(tree, tmp_path):
    target = tmp_path / "volume" / "model"
    publish(tree, target)
    subprocess.run(["sha256sum", "--check", "--quiet", MANIFEST_FILE], cwd=target, check=True)
    assert (target / "big.bin").read_bytes() == (tree / "big.bin").read_bytes()


def test_make_buckets_is_idempotent(s3_env, capsys):
    from sherlock.cli import main

    main(["make-buckets", "made-once", "made-twice"])
    main(["make-buckets", "made-twice"])
    assert capsys.readouterr().out.splitlines() == ["made-once: created", "made-twice: created", "made-twice: exists"]
    assert Storage().client.bucket_exists("made-once")


@pytest.mark.parametrize("name", ["/etc/cron.d/x", "../outside.txt", "a/../../outside.txt", "a\\..\\b", "a//b", "./a"])
def test_a_hostile_manifest_never_chooses_where_a_download_is_written(tree, bucket, tmp_path, name):
    """A SHA256SUMS replaced on the object store names a path outside the destination: refused before
    any download, nothing written outside."""
    storage = Storage()
    storage.upload_dir(tree, f"s3://{bucket}/model")
    hostile = tmp_path / "SHA256SUMS"
    hostile.write_text(f"{'0' * 64}  config.json\n{'0' * 64}  {name}\n")
    storage.client.fput_object(bucket, f"model/{MANIFEST_FILE}", str(hostile))
    with pytest.raises(IntegrityError, match=f"{MANIFEST_FILE} line 2.*not a relative path"):
        storage.download_dir(f"s3://{bucket}/model", tmp_path / "dest" / "back")
    assert not (tmp_path / "dest").exists() and not (tmp_path / "outside.txt").exists()


def test_a_key_with_dot_dot_parts_cannot_name_a_place_outside_the_cache(bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("SHERLOCK_CACHE", str(tmp_path / "cache"))
    for uri in (f"s3://{bucket}/../../escape", f"s3://{bucket}/a/./b", f"s3://{bucket}/a\\b"):
        with pytest.raises(StorageError, match="not a relative path"):
            fetch(uri)
    assert not (tmp_path / "escape").exists() and not (tmp_path / "escape.lock").exists()


def test_a_cached_file_changed_on_disk_is_downloaded_again(tree, bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("SHERLOCK_CACHE", str(tmp_path / "cache"))
    uri = publish(tree, f"s3://{bucket}/data/subset")
    local = fetch(uri)
    (local / "config.json").write_text('{"a": "tampered"}')
    assert (fetch(uri) / "config.json").read_text() == '{"a": 1}'


def test_secrets_stay_out_of_the_settings_repr():
    text = repr(S3Settings(access_key="AKIAEXAMPLE", secret_key="s3cr3t-value", session_token="t0ken-value"))
    assert "AKIAEXAMPLE" in text and "s3cr3t-value" not in text and "t0ken-value" not in text


def test_symbolic_links_are_refused_unless_followed_on_purpose(tree, bucket, tmp_path, monkeypatch):
    """A linked file would upload bytes from outside the directory (a private key), a linked directory was
    silently skipped (the manifest listed no images); both are refused, naming the link, and uploaded
    only with follow_symlinks (``sherlock upload --follow-symlinks``). A cycle is refused either way."""
    secret = tmp_path / "id_ed25519"
    secret.write_text("PRIVATE KEY")
    images = tmp_path / "shared-images"
    images.mkdir()
    (images / "a.png").write_bytes(b"png bytes")
    (tree / "key").symlink_to(secret)
    (tree / "images").symlink_to(images)
    storage = Storage()
    with pytest.raises(StorageError, match=r"symbolic links.*\n.*images -> .*shared-images\n.*key -> .*id_ed25519"):
        storage.upload_dir(tree, f"s3://{bucket}/linked")
    assert storage.list_names(f"s3://{bucket}/linked") == []  # refused before anything went up
    with pytest.raises(StorageError, match="symbolic links"):
        publish(tree, tmp_path / "copy")
    assert not (tmp_path / "copy").exists()

    (tree / "key").unlink()
    result = subprocess.run([sys.executable, "-m", "sherlock.cli", "upload", "--follow-symlinks", str(tree),
                             f"s3://{bucket}/linked"], capture_output=True, text=True, env=os.environ, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "following" in result.stderr and "shared-images" in result.stderr
    monkeypatch.setenv("SHERLOCK_CACHE", str(tmp_path / "cache"))
    assert (fetch(f"s3://{bucket}/linked") / "images" / "a.png").read_bytes() == b"png bytes"

    (images / "loop").symlink_to(tree)
    with pytest.raises(StorageError, match="a second time"):
        storage.upload_dir(tree, f"s3://{bucket}/linked", follow_symlinks=True)


def test_a_cache_directory_replaced_by_a_link_is_refused(tree, bucket, tmp_path, monkeypatch):
    """A download never follows a link planted in the cache: the files would land where it points."""
    monkeypatch.setenv("SHERLOCK_CACHE", str(tmp_path / "cache"))
    uri = publish(tree, f"s3://{bucket}/data/subset")
    local = fetch(uri)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.rmtree(local)
    local.symlink_to(elsewhere)
    with pytest.raises(StorageError, match="is a symbolic link"):
        fetch(uri)
    assert list(elsewhere.iterdir()) == []


def test_copy_published_copies_between_prefixes_in_the_store_and_refuses_an_incomplete_one(tree, bucket, tmp_path,
                                                                                            monkeypatch):
    """How a registered checkpoint reaches its own prefix: a server-side copy (no object passes through
    this process: the downloads counted stay zero), idempotent; a prefix without its manifest is refused;
    to a local path it is published from the cache."""
    monkeypatch.setenv("SHERLOCK_CACHE", str(tmp_path / "cache"))
    storage = Storage()
    uri, target = f"s3://{bucket}/runs/1/model", f"s3://{bucket}/registered/model"
    storage.upload_dir(tree, uri)
    downloads, copies, copy_dir = [], [], storage.copy_dir
    monkeypatch.setattr(storage, "download_file", lambda *args, **kwargs: downloads.append(args))
    monkeypatch.setattr(storage, "copy_dir", lambda *args: copies.append(args) or copy_dir(*args))
    assert copy_published(uri, target, storage) == target and downloads == [] and len(copies) == 1
    assert storage.manifest(target) == storage.manifest(uri)
    copy_published(uri, target, storage)  # a retried step: the same manifest, nothing copied again
    assert len(copies) == 1
    same_tree(tree, fetch(target, Storage()))
    Storage().remove(f"{uri}/{MANIFEST_FILE}")
    with pytest.raises(StorageError, match="has no SHA256SUMS"):
        copy_published(uri, f"s3://{bucket}/registered/other", storage)
    local = copy_published(target, str(tmp_path / "registry" / "model"))
    same_tree(tree, fetch(local))
