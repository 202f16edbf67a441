"""P7: a pipeline task's start-up — forked from the warm interpreter against a fresh one.

Each kfp.local task of the embedded pipeline is a process that imports torch, transformers, TRL,
datasets and MLflow before its stage starts. The project's path (:mod:`pipelines.warm_tasks`, what
``python -m pipelines.run_local`` uses) forks it from a server that imported them once; the
baseline is the fresh interpreter kfp.local starts. The task measured is ``python -m
sherlock.stages.sft`` (the SFT stage module: every import of a training task, then exit), run
alternately through both; the metric is tasks started per second.
"""

from __future__ import annotations

import subprocess
import sys

from bench.common import Result, alternate, median
from pipelines.warm_tasks import warm_tasks

TARGET = 5.0
TASK = ("-m", "sherlock.stages.sft")


def run(workspace, quick: bool, device) -> Result:
    cold = sys.executable

    def start(executable: str):
        return lambda: subprocess.run([executable, *TASK], check=True, capture_output=True)

    with warm_tasks() as launcher:
        times = alternate({"warm": start(launcher), "cold": start(cold)}, rounds=1 if quick else 5)
    warm, fresh = median(times["warm"]), median(times["cold"])
    return Result("P7 task start-up", "tasks/s", 1 / warm, 1 / fresh, fresh / warm, TARGET,
                  {"task": " ".join(["python", *TASK]), "warm_seconds": times["warm"], "cold_seconds": times["cold"]})
