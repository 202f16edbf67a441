"""Helpers of the serving tests: images and a real ``sherlock serve`` subprocess on 127.0.0.1."""

import base64
import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from servers import free_port, wait_http

QUESTION = "How many red shapes are there?"


def png_bytes(size=(72, 72), color=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def png(size=(72, 72), color=(200, 30, 30)) -> str:
    return base64.b64encode(png_bytes(size, color)).decode()


@dataclass
class Server:
    url: str
    port: int
    process: subprocess.Popen
    log: Path

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        return self.process.wait(30)


def start_server(model_dir, log: Path, *options: str) -> Server:
    """``sherlock serve`` on a free port; returns once the model is loaded and the server listens."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "sherlock.cli", "serve", "--model", str(model_dir), "--http-port", str(port), *options],
        stdout=log.open("w"), stderr=subprocess.STDOUT, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/v2/models/sherlock/ready", process, timeout=120, log=log)
    return Server(url, port, process, log)
