"""The warm task server behind kfp.local's tasks: a forked task is the process kfp.local would start."""

import os
import subprocess
import sys

import pytest

from pipelines.warm_tasks import LAUNCHER, warm_tasks

PROBE = """
import os, sys, torch
print("argv", sys.argv[1:], "env", os.environ.get("PROBE"), "cwd", os.getcwd(), flush=True)
print("on stderr", file=sys.stderr)
torch.set_num_threads(2)
matrix = torch.ones(512, 512)
print("matmul", float((matrix @ matrix)[0, 0]), "pid", os.getpid())
sys.exit(int(os.environ.get("PROBE_EXIT", "0")))
"""


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    directory = tmp_path_factory.mktemp("probe")
    (directory / "probe_task.py").write_text(PROBE)
    return directory


def _run(executable, directory, exit_code="0"):
    return subprocess.run([executable, "-m", "probe_task", "a", "b c"], cwd=directory, capture_output=True, text=True,
                          env=dict(os.environ, PROBE="x", PROBE_EXIT=exit_code), timeout=120)


def test_a_warm_task_has_the_arguments_environment_streams_and_status_of_a_cold_one(probe):
    cold = _run(sys.executable, probe, exit_code="3")
    with warm_tasks() as launcher:  # every module a task imports, preloaded
        assert sys.executable == launcher != cold.args[0]
        warm = [_run(launcher, probe, exit_code="3") for _ in range(2)]
        server_side = _run(launcher, probe.parent)  # a working directory without the module: the task fails
    assert sys.executable == cold.args[0]  # restored
    strip_pid = lambda out: out.rsplit(" pid ", 1)[0]  # noqa: E731
    for run in warm:
        assert (run.returncode, strip_pid(run.stdout), run.stderr) == (3, strip_pid(cold.stdout), cold.stderr)
        assert f"cwd {probe}" in run.stdout and "matmul 512.0" in run.stdout  # two-thread matmul after fork
    assert warm[0].stdout.rsplit(" pid ", 1)[1] != warm[1].stdout.rsplit(" pid ", 1)[1]  # a process per task
    assert server_side.returncode == 1 and "No module named probe_task" in server_side.stderr


def test_without_a_server_the_launcher_runs_the_interpreter_itself(probe, tmp_path):
    launcher = tmp_path / "python3"
    launcher.write_text(LAUNCHER.format(python=sys.executable, socket=str(tmp_path / "absent.sock")))
    launcher.chmod(0o700)
    run = _run(str(launcher), probe, exit_code="4")
    assert run.returncode == 4 and "argv ['a', 'b c'] env x" in run.stdout
