"""One URI layer for local paths and ``s3://bucket/key`` (SeaweedFS, MinIO or any S3 API), through the minio SDK.

A *directory* on S3 is a key prefix holding its files and a ``SHA256SUMS`` manifest in the format of
``sha256sum`` (uploaded last, so a prefix without it is an incomplete upload). Downloads check
every file against the manifest. Large files go up in multipart parts; every object transfer is
retried with exponential backoff on transient errors (connection resets, timeouts, 5xx, SlowDown).

Endpoint and credentials come from the environment (the AWS SDK names, so the same Secret serves
MLflow, KServe and this package) or from :class:`S3Settings`:

- ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` / ``MLFLOW_S3_ENDPOINT_URL``: e.g. ``http://sherlock-seaweedfs:8333``
  (``https://s3.amazonaws.com`` when unset);
- ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``;
- ``AWS_CA_BUNDLE`` (a CA file for TLS) and ``S3_VERIFY_SSL=0`` (turn certificate checks off).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import certifi
import urllib3
from tqdm import tqdm

MANIFEST_FILE = "SHA256SUMS"
PART_SIZE = 16 * 1024 * 1024  # multipart part size: files above it go up in parts
RETRYABLE_S3_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "RequestTimeTooSkewed"}
AUTH_S3_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken", "InvalidToken"}


class StorageError(RuntimeError):
    """An S3 operation failed for a reason retrying does not fix (credentials, missing bucket or key)."""


class IntegrityError(StorageError):
    """A downloaded file does not match the directory's SHA256SUMS manifest."""


def is_s3(uri: str | Path) -> bool:
    """Whether ``uri`` is an ``s3://`` URI."""
    return str(uri).startswith("s3://")


def check_relative(name: str, what: str) -> str:
    """``name`` if it is a relative POSIX path that stays where it is put: no absolute path, no ``..``
    or ``.`` part, no empty part, no backslash or NUL; otherwise a :class:`StorageError` naming ``what``.
    """
    parts = name.split("/")
    if (not name or name.startswith("/") or "\\" in name or "\0" in name
            or any(part in ("", ".", "..") for part in parts)):
        raise StorageError(f"{what}: {name!r} is not a relative path inside its directory")
    return name


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` → ``("bucket", "some/key")`` (no trailing slash; a key with ``..`` or
    ``.`` parts, backslashes or empty parts is refused: it would name another place in a local cache).
    """
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"not an s3://bucket/key URI: {uri!r}")
    key = parsed.path.strip("/")
    if key:
        check_relative(key, f"key of {uri}")
    return parsed.netloc, key


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """The hex SHA-256 of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class SymlinkError(StorageError):
    """A directory to publish holds symbolic links and was not asked to follow them."""


def directory_files(root: Path, follow_symlinks: bool = False) -> list[Path]:
    """Every regular file under ``root`` (relative paths, sorted), the manifest excluded.

    A symbolic link is refused (:class:`SymlinkError`, every link with its target): a linked file would
    publish bytes from outside the directory (a private key), a linked directory would be skipped. With
    ``follow_symlinks`` both are followed on purpose (a data set whose ``images -> /shared/images``), each
    noted on stderr; a link to a directory above it, or to nothing, is refused either way.
    """
    files, links, walked = [], [], set()
    for directory, subdirectories, names in os.walk(root, followlinks=follow_symlinks):
        here = Path(directory)
        if here.resolve() in walked:
            raise SymlinkError(f"{here} reaches {here.resolve()} a second time (a link to a directory above it, "
                               "or two links to one directory)")
        walked.add(here.resolve())
        for name in subdirectories + names:
            path = here / name
            if path.is_symlink():
                if not path.exists():
                    raise SymlinkError(f"{path} is a symbolic link to nothing ({os.readlink(path)})")
                links.append(path)
        files += [(here / name).relative_to(root) for name in names if (here / name).is_file()]
    if links and not follow_symlinks:
        listed = "\n".join(f"  {link} -> {os.readlink(link)}" for link in links)
        raise SymlinkError(f"{root} holds symbolic links; copy what they point to into it, or follow them on "
                           f"purpose (sherlock upload --follow-symlinks):\n{listed}")
    for link in links:
        print(f"following {link} -> {link.resolve()}", file=sys.stderr)
    return sorted(path for path in files if path != Path(MANIFEST_FILE))


def manifest_text(sums: dict[str, str]) -> str:
    """``sums`` in ``sha256sum``'s format."""
    return "".join(f"{digest}  {name}\n" for name, digest in sums.items())


def file_sums(root: str | Path, follow_symlinks: bool = False) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``root`` (its manifest excluded; links:
    :func:`directory_files`).
    """
    return {path.as_posix(): sha256_file(Path(root) / path)
            for path in directory_files(Path(root), follow_symlinks)}


def sums_digest(sums: dict[str, str]) -> str:
    """sha256 of a SHA256SUMS listing: one digest for every file's name and content."""
    return hashlib.sha256(manifest_text(sums).encode()).hexdigest()


def previous_version_uri(uri: str, digest: str) -> str:
    """Where :meth:`Storage.upload_dir` keeps the complete version (SHA256SUMS digest ``digest``) that
    a new upload to ``uri`` replaces: the sibling prefix ``<uri>@<first 16 hex digits>``.
    """
    return f"{uri.rstrip('/')}@{digest[:16]}"


def directory_digest(root: str | Path, storage: Storage | None = None) -> str:
    """sha256 of the SHA256SUMS listing of ``root``: one digest for every file's name and content.

    A local directory is hashed file by file; an ``s3://`` directory is read from its published
    SHA256SUMS (the objects themselves are checked when fetched).
    """
    if is_s3(root):
        sums = (storage or Storage()).manifest(str(root))
        if sums is None:
            raise StorageError(f"{root} has no {MANIFEST_FILE}: not a directory written by upload_dir")
    else:
        sums = file_sums(root)
    return sums_digest(sums)


def write_manifest(root: str | Path, follow_symlinks: bool = False) -> dict[str, str]:
    """Hash every file under ``root`` into ``root/SHA256SUMS``; returns ``{relative path: sha256}``."""
    root = Path(root)
    sums = file_sums(root, follow_symlinks)
    (root / MANIFEST_FILE).write_text(manifest_text(sums))
    return sums


def parse_manifest(text: str) -> dict[str, str]:
    """``{relative path: sha256}`` of a SHA256SUMS text; every path must stay inside its directory
    (:func:`check_relative`): a manifest from storage never chooses where a download is written.
    """
    sums = {}
    for number, line in enumerate(text.splitlines(), 1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
            raise IntegrityError(f"{MANIFEST_FILE} line {number} is not '<sha256>  <path>': {line!r}")
        try:
            sums[check_relative(name, f"{MANIFEST_FILE} line {number}")] = digest
        except StorageError as error:
            raise IntegrityError(str(error)) from None
    return sums


@dataclass
class S3Settings:
    """Where and how to reach the object store."""

    endpoint: str = "https://s3.amazonaws.com"
    access_key: str | None = None
    secret_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    region: str | None = None
    ca_bundle: str | None = None
    verify_tls: bool = True

    @classmethod
    def from_env(cls) -> S3Settings:
        """The settings from ``AWS_*`` (or MLflow's S3) environment variables."""
        env = os.environ
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or env.get("MLFLOW_S3_ENDPOINT_URL")
        return cls(
            endpoint=endpoint or cls.endpoint,
            access_key=env.get("AWS_ACCESS_KEY_ID"),
            secret_key=env.get("AWS_SECRET_ACCESS_KEY"),
            session_token=env.get("AWS_SESSION_TOKEN"),
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"),
            ca_bundle=env.get("AWS_CA_BUNDLE"),
            verify_tls=env.get("S3_VERIFY_SSL", "1").lower() not in ("0", "false", "no"),
        )


class Storage:
    """Uploads and downloads files and directories between local disk and S3.

    The minio client is built without urllib3's own retries so that a failure surfaces here and the
    whole object transfer is retried (``retries`` times, backoff ``backoff · 2^attempt`` seconds).
    """

    def __init__(self, settings: S3Settings | None = None, retries: int = 4, backoff: float = 0.5,
                 part_size: int = PART_SIZE):
        from minio import Minio

        self.settings = settings or S3Settings.from_env()
        self.retries, self.backoff, self.part_size = retries, backoff, part_size
        self._buckets: set[str] = set()
        endpoint = urlparse(self.settings.endpoint)
        if endpoint.scheme not in ("http", "https") or not endpoint.netloc:
            raise ValueError(f"S3 endpoint must be http(s)://host[:port], got {self.settings.endpoint!r}")
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=10, read=300), maxsize=10,
            cert_reqs="CERT_REQUIRED" if self.settings.verify_tls else "CERT_NONE",
            ca_certs=self.settings.ca_bundle or certifi.where(), retries=urllib3.Retry(total=0, redirect=0))
        self.client = Minio(endpoint.netloc, access_key=self.settings.access_key, secret_key=self.settings.secret_key,
                            session_token=self.settings.session_token, secure=endpoint.scheme == "https",
                            region=self.settings.region, http_client=http, cert_check=self.settings.verify_tls)

    def _call(self, what: str, function, *args, **kwargs):
        """Run one S3 operation, retrying transient failures; named errors for the permanent ones."""
        from minio.error import S3Error, ServerError

        for attempt in range(self.retries + 1):
            try:
                return function(*args, **kwargs)
            except S3Error as error:
                if error.code in AUTH_S3_CODES:
                    raise StorageError(f"{what}: S3 refused the credentials ({error.code}: {error.message}); "
                                       "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY") from error
                if error.code == "NoSuchBucket":
                    raise StorageError(f"{what}: bucket {error.bucket_name!r} does not exist") from error
                if error.code not in RETRYABLE_S3_CODES or attempt == self.retries:
                    raise StorageError(f"{what}: {error.code}: {error.message}") from error
                reason = error.code
            except (urllib3.exceptions.HTTPError, ServerError, ConnectionError, TimeoutError) as error:
                if attempt == self.retries:
                    raise StorageError(f"{what}: failed after {attempt + 1} attempts: {error}") from error
                reason = type(error).__name__
            delay = self.backoff * 2 ** attempt
            print(f"{what}: {reason}; retry {attempt + 1}/{self.retries} in {delay:.1f}s", flush=True)
            time.sleep(delay)

    # objects -------------------------------------------------------------------------------------
    def _locate(self, uri: str) -> tuple[str, str]:
        """``(bucket, key)`` of ``uri``, after checking once per bucket that the bucket exists (skipped for
        an identity limited to a key prefix, which may not ask about the bucket: its object calls say what
        is wrong).
        """
        from minio.error import S3Error

        bucket, key = split_s3_uri(uri)
        if bucket not in self._buckets:
            try:
                exists = self._call(f"check bucket {bucket}", self.client.bucket_exists, bucket)
            except StorageError as error:
                if not (isinstance(error.__cause__, S3Error) and error.__cause__.code == "AccessDenied"):
                    raise
                exists = True
            if not exists:
                raise StorageError(f"bucket {bucket!r} does not exist at {self.settings.endpoint} (needed for {uri})")
            self._buckets.add(bucket)
        return bucket, key

    def ensure_bucket(self, bucket: str) -> bool:
        """Create ``bucket`` unless it exists (retried like every call); True when it was created."""
        if self._call(f"check bucket {bucket}", self.client.bucket_exists, bucket):
            return False
        self._call(f"create bucket {bucket}", self.client.make_bucket, bucket)
        return True

    def exists(self, uri: str) -> bool:
        """Whether the object ``uri`` exists."""
        from minio.error import S3Error

        bucket, key = self._locate(uri)
        try:
            self._call(f"stat {uri}", self.client.stat_object, bucket, key)
        except StorageError as error:
            if isinstance(error.__cause__, S3Error) and error.__cause__.code in ("NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def upload_file(self, path: str | Path, uri: str) -> None:
        """Upload the file ``path`` to ``uri``."""
        bucket, key = self._locate(uri)
        self._call(f"upload {path} -> {uri}", self.client.fput_object, bucket, key, str(path),
                   part_size=self.part_size)

    def download_file(self, uri: str, path: str | Path, expected_sha256: str | None = None) -> Path:
        """Download one object; with ``expected_sha256`` the file must hash to it."""
        bucket, key = self._locate(uri)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._call(f"download {uri}", self.client.fget_object, bucket, key, str(path))
        if expected_sha256 is not None and (actual := sha256_file(path)) != expected_sha256:
            path.unlink()
            raise IntegrityError(f"{uri}: sha256 {actual} does not match the manifest's {expected_sha256}")
        return path

    def read_text(self, uri: str) -> str:
        """The object ``uri`` as UTF-8 text."""
        bucket, key = self._locate(uri)
        response = self._call(f"read {uri}", self.client.get_object, bucket, key)
        try:
            return response.read().decode()
        finally:
            response.close()
            response.release_conn()

    # directories ---------------------------------------------------------------------------------
    def remove(self, uri: str) -> None:
        """Remove the object ``uri``."""
        bucket, key = self._locate(uri)
        self._call(f"remove {uri}", self.client.remove_object, bucket, key)

    def list_names(self, uri: str) -> list[str]:
        """Names (relative to the prefix ``uri``) of every object under the directory ``uri``."""
        bucket, key = self._locate(uri)
        prefix = f"{key.rstrip('/')}/"
        objects = self._call(f"list {uri}", lambda: list(self.client.list_objects(bucket, prefix, recursive=True)))
        return [item.object_name[len(prefix):] for item in objects]

    def copy_dir(self, uri: str, target: str, sums: dict[str, str]) -> None:
        """Server-side copy of the complete directory ``uri`` (files ``sums``) to ``target``, manifest last."""
        from minio.commonconfig import CopySource

        for name in [*sums, MANIFEST_FILE]:
            bucket, key = self._locate(f"{uri}/{name}")
            target_bucket, target_key = self._locate(f"{target}/{name}")
            self._call(f"copy {uri}/{name} -> {target}/{name}", self.client.copy_object, target_bucket, target_key,
                       CopySource(bucket, key))

    def upload_dir(self, local: str | Path, uri: str, follow_symlinks: bool = False) -> dict[str, str]:
        """Upload every file under ``local`` to the prefix ``uri``, manifest last; returns the sums.

        Never destroys a complete version: when ``uri`` already holds one with other contents, it is
        first copied (server-side) to :func:`previous_version_uri` and its manifest removed, so an
        upload cut short leaves ``uri`` visibly incomplete (no SHA256SUMS: refused by every reader)
        and the previous version whole beside it. Objects under ``uri`` that the new manifest does not
        list (the previous version's, a cut upload's) are removed before the manifest goes up, so the
        prefix holds exactly the new version (KServe's storage initializer copies every key under it).
        The same contents again is a no-op (a retried step). Symbolic links: :func:`directory_files`.
        """
        local, uri = Path(local), uri.rstrip("/")
        sums = write_manifest(local, follow_symlinks)
        previous = self.manifest(uri)
        if previous == sums:
            return sums
        if previous is not None:
            kept = previous_version_uri(uri, sums_digest(previous))
            if self.manifest(kept) != previous:
                self.copy_dir(uri, kept, previous)
            print(f"upload {uri}: the version it held is kept at {kept}", file=sys.stderr)
            self.remove(f"{uri}/{MANIFEST_FILE}")
        total = sum((local / name).stat().st_size for name in sums)
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"upload {uri}", leave=False) as bar:
            for name in sums:
                self.upload_file(local / name, f"{uri}/{name}")
                bar.update((local / name).stat().st_size)
        for stale in set(self.list_names(uri)) - set(sums) - {MANIFEST_FILE}:
            self.remove(f"{uri}/{stale}")
        self.upload_file(local / MANIFEST_FILE, f"{uri}/{MANIFEST_FILE}")
        return sums

    def manifest(self, uri: str) -> dict[str, str] | None:
        """The SHA256SUMS of the directory ``uri``, or ``None`` when it has none."""
        manifest_uri = f"{uri.rstrip('/')}/{MANIFEST_FILE}"
        return parse_manifest(self.read_text(manifest_uri)) if self.exists(manifest_uri) else None

    def download_dir(self, uri: str, local: str | Path, sums: dict[str, str] | None = None) -> Path:
        """Download the directory ``uri`` into ``local``, checking every file against its manifest.

        ``sums`` (default: the directory's own SHA256SUMS) lists the files to fetch and their digests.
        """
        sums = sums if sums is not None else self.manifest(uri)
        if sums is None:
            raise StorageError(f"{uri} has no {MANIFEST_FILE}: not a directory written by upload_dir, "
                               "or its upload did not finish")
        local = Path(local)
        for name, digest in tqdm(sums.items(), desc=f"download {uri}", unit="file", leave=False):
            self.download_file(f"{uri.rstrip('/')}/{name}", confined(local, name), expected_sha256=digest)
        (local / MANIFEST_FILE).write_text(manifest_text(sums))
        return local


def confined(root: Path, name: str) -> Path:
    """``root / name``, refused unless it resolves inside ``root`` (symbolic links followed)."""
    path = root / check_relative(name, f"a file under {root}")
    if not path.resolve().is_relative_to(root.resolve()):
        raise StorageError(f"{name!r} resolves outside {root}")
    return path


def cache_root() -> Path:
    """The download cache: ``$SHERLOCK_CACHE`` or ``~/.cache/sherlock``."""
    return Path(os.environ.get("SHERLOCK_CACHE", Path.home() / ".cache" / "sherlock"))


def fetch(uri: str | Path, storage: Storage | None = None, with_directory: bool = False) -> Path:
    """A local path holding ``uri``: local paths as they are, S3 directories and files downloaded.

    Downloads land in ``$SHERLOCK_CACHE/s3/<bucket>/<key>`` and are reused while the remote manifest
    is unchanged. ``uri`` may be a directory written by :func:`publish`, or a file or sub-directory
    inside one: its files are checked against the nearest SHA256SUMS above them. With
    ``with_directory``, a file is fetched with the whole directory around it (a jsonl with the
    images it refers to) and its path inside the local copy is returned.
    """
    if not is_s3(uri):
        return Path(uri)
    uri = str(uri).rstrip("/")
    bucket, key = split_s3_uri(uri)
    target = cache_root() / "s3" / bucket / key
    check_no_links(cache_root(), target)  # before anything is made through a planted link
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{target}.lock", "w") as lock:  # processes of one node (torchrun ranks) download once
        fcntl.flock(lock, fcntl.LOCK_EX)
        storage = storage or Storage()
        covering = _covering_manifest(uri, storage)
        if with_directory and covering is not None and covering[1] in covering[2]:
            base, inside, _ = covering
            return fetch(base, storage) / inside
        return _fetch_s3(uri, target, storage, covering)


def _covering_manifest(uri: str, storage: Storage) -> tuple[str, str, dict[str, str]] | None:
    """``(directory, path inside it, its SHA256SUMS)`` for the nearest directory at or above ``uri``."""
    base, inside = uri, ""
    while base.count("/") > 2:
        sums = storage.manifest(base)
        if sums is not None:
            return base, inside, sums
        base, _, name = base.rpartition("/")
        inside = f"{name}/{inside}" if inside else name
    return None


def _fetch_s3(uri: str, target: Path, storage: Storage, covering) -> Path:
    if covering is None:
        if not storage.exists(uri):
            if storage.list_names(uri):
                raise StorageError(f"{uri} has no {MANIFEST_FILE}: an upload that did not finish; not served")
            raise FileNotFoundError(f"nothing at {uri} (neither an object nor inside a directory with {MANIFEST_FILE})")
        print(f"warning: no {MANIFEST_FILE} covers {uri}; downloaded unverified", file=sys.stderr)
        return storage.download_file(uri, target)
    base, inside, sums = covering
    if inside in sums:
        return storage.download_file(uri, target, expected_sha256=sums[inside])
    if inside:
        sums = {name[len(inside) + 1:]: digest for name, digest in sums.items() if name.startswith(f"{inside}/")}
        if not sums:
            raise FileNotFoundError(f"{uri} is not listed in {base}/{MANIFEST_FILE}")
    cached = target / MANIFEST_FILE
    if cached.is_file() and parse_manifest(cached.read_text()) == sums and all(
            (target / name).is_file() and sha256_file(target / name) == digest for name, digest in sums.items()):
        return target  # reused only when every cached file still hashes to the manifest
    shutil.rmtree(target, ignore_errors=True)
    return storage.download_dir(uri, target, sums)


def check_no_links(root: Path, path: Path) -> None:
    """Refuse ``path`` under ``root`` when a part of it below ``root`` is a symbolic link: a cache
    directory replaced by a link would have downloads written wherever it points.
    """
    for part in [path, *path.parents]:
        if part == root:
            return
        if part.is_symlink():
            raise StorageError(f"{part} is a symbolic link (to {os.readlink(part)}); the cache under {root} holds "
                               "only what it downloaded: remove the link")


def publish(local: str | Path, uri: str | Path, storage: Storage | None = None, follow_symlinks: bool = False) -> str:
    """Make the directory ``local`` available at ``uri``: uploaded to S3, or copied to a local path.

    Either way the directory gets a SHA256SUMS manifest; symbolic links are refused unless
    ``follow_symlinks`` (:func:`directory_files`). Returns ``uri`` as a string.
    """
    local = Path(local)
    if is_s3(uri):
        (storage or Storage()).upload_dir(local, str(uri), follow_symlinks)
    elif Path(uri).resolve() != local.resolve():
        directory_files(local, follow_symlinks)  # refused before anything is copied
        shutil.copytree(local, uri, dirs_exist_ok=True)  # links copied as what they point to
        write_manifest(uri)
    else:
        write_manifest(local, follow_symlinks)
    return str(uri)


def copy_published(uri: str, target: str, storage: Storage | None = None) -> str:
    """The complete published directory ``uri`` at ``target`` as well; returns ``target``.

    Between two ``s3://`` prefixes the copy is server-side (a checkpoint never leaves the store), manifest
    last; otherwise the cached copy of ``uri`` is published. A ``target`` already holding the same
    manifest is left as it is (a retried step).
    """
    if not (is_s3(uri) and is_s3(target)):
        return publish(fetch(uri, storage), target, storage)
    storage = storage or Storage()
    sums = storage.manifest(uri)
    if sums is None:
        raise StorageError(f"{uri} has no {MANIFEST_FILE}: not a complete published directory")
    if storage.manifest(target) != sums:
        storage.copy_dir(uri, target, sums)
    return target
