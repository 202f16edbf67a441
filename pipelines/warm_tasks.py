"""A warm interpreter for kfp.local's task processes: the heavy imports once, a fork per task.

kfp.local's ``SubprocessRunner`` starts every task as ``python3 -m kfp.dsl.executor_main …``
(``python3`` replaced by ``sys.executable``), and each task spends seconds importing torch,
transformers, TRL, datasets and MLflow before its stage starts — for each of the Sherlock
pipeline's 17 tasks. :func:`warm_tasks` starts one server process that imports them (and the
stage modules) once; while it runs, ``sys.executable`` names a launcher script that passes the
server its arguments, working directory, environment and standard streams (the file descriptors
themselves, over a Unix socket) and exits with the status of the child the server forked for it;
SIGINT and SIGTERM are forwarded to the child. The task then runs as the process kfp.local would
have started: the same module, arguments, environment (applied in the child before the task's
module runs) and streams. The server serves one task at a time, as kfp.local runs them; without
a reachable server the launcher execs the interpreter itself.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import runpy
import socket
import struct
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

# what a stage task imports before its stage starts (kfp's executor, the steps, the stage modules)
PRELOAD = ("kfp.dsl.executor_main", "mlflow", "torch", "transformers", "trl", "datasets", "components.steps",
           "sherlock.tracking", "sherlock.stages.sft", "sherlock.stages.sample_rejected",
           "sherlock.stages.build_preferences", "sherlock.stages.train_preferences", "sherlock.stages.online",
           "sherlock.stages.evaluate", "sherlock.mlflow_model")
HEADER = struct.Struct("!I")
STATUS = struct.Struct("!i")

LAUNCHER = '''#!{python} -S
"""kfp.local's task interpreter: hands this task to the warm server (pipelines/warm_tasks.py)."""
import json, os, signal, socket, struct, sys

args = sys.argv[1:]
try:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.connect({socket!r})
except OSError:
    os.execv({python!r}, [{python!r}, *args])
request = json.dumps({{"args": args, "cwd": os.getcwd(), "env": dict(os.environ)}}).encode()
socket.send_fds(server, [struct.pack("!I", len(request))], [0, 1, 2])
server.sendall(request)


def receive(size):
    data = b""
    while len(data) < size:
        chunk = server.recv(size - len(data))
        if not chunk:
            sys.exit("the warm task server closed the connection")
        data += chunk
    return data


child = struct.unpack("!i", receive(4))[0]
for name in ("SIGINT", "SIGTERM"):
    signal.signal(getattr(signal, name), lambda number, frame: os.kill(child, number))
sys.exit(struct.unpack("!i", receive(4))[0])
'''


def _receive(connection: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the launcher closed the connection")
        data += chunk
    return data


def _run_task(request: dict) -> int:
    """In the forked child: become the task's process and run ``python -m <module> <args>``."""
    args = request["args"]
    if len(args) < 2 or args[0] != "-m":
        print(f"warm task server: only `-m module …` is served, got {args[:2]}", file=sys.stderr)
        return 2
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.path[0] = request["cwd"]  # as `python -m` puts the working directory first
    sys.argv = [args[1], *args[2:]]
    try:
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException:  # the task's own failure: its traceback, as the plain interpreter prints it
        traceback.print_exc()
        return 1
    return 0


def _serve_one(listener: socket.socket, connection: socket.socket) -> None:
    header, fds, _, _ = socket.recv_fds(connection, HEADER.size, 3)
    request = json.loads(_receive(connection, HEADER.unpack(header)[0]))
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            listener.close()
            connection.close()
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
                os.close(fd)
            code = _run_task(request)
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)
    for fd in fds:
        os.close(fd)
    connection.sendall(STATUS.pack(pid))
    _, status = os.waitpid(pid, 0)
    connection.sendall(STATUS.pack(os.waitstatus_to_exitcode(status)))


def serve(path: str, preload: tuple[str, ...] = PRELOAD) -> None:
    """Import ``preload``, then serve tasks on the Unix socket ``path`` until killed."""
    for module in preload:
        importlib.import_module(module)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(8)
    print("ready", flush=True)
    while True:
        connection, _ = listener.accept()
        with connection:
            try:
                _serve_one(listener, connection)
            except (ConnectionError, OSError, ValueError) as error:
                print(f"warm task server: a task request failed: {error}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def warm_tasks(preload: tuple[str, ...] = PRELOAD):
    """While open, ``sys.executable`` is a launcher that runs ``-m module`` tasks in a warm fork.

    Yields the launcher's path. The server inherits this process's environment (the one kfp.local
    gives its tasks, plus each task's own variables, applied in the child).
    """
    if not hasattr(os, "fork") or not hasattr(socket, "send_fds"):
        yield sys.executable
        return
    python = sys.executable
    with tempfile.TemporaryDirectory(prefix="sherlock-tasks-") as scratch:
        path = str(Path(scratch) / "server.sock")
        launcher = Path(scratch) / "python3"
        launcher.write_text(LAUNCHER.format(python=python, socket=path))
        launcher.chmod(0o700)
        # run from the checkout's root, where `pipelines` is a package (as file, its folder would come
        # first on sys.path, and pipelines/sherlock.py would hide the sherlock package)
        server = subprocess.Popen([python, "-m", "pipelines.warm_tasks", path, *preload], stdout=subprocess.PIPE,
                                  text=True, cwd=Path(__file__).resolve().parents[1])
        try:
            if server.stdout.readline().strip() != "ready":
                raise RuntimeError(f"the warm task server did not start (exit status {server.wait()})")
            sys.executable = str(launcher)
            yield sys.executable
        finally:
            sys.executable = python
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    serve(sys.argv[1], tuple(sys.argv[2:]))
