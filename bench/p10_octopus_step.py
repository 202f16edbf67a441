"""P10: an Octopus RL step against GSPO with n = 8 — the same rows trained, half of them generated.

Octopus (arXiv 2602.08503, Tab. 2) generates n rollouts per prompt and trains 2n rows, n of them recombined from
the group's own rollouts; GSPO with 2n rollouts generates all of them. Both arms run ``sherlock train-rl`` on the
workspace's model and data for the same optimiser steps (8 rows per micro-step, 4 micro-steps per generation
batch, the rollouts' length capped), Octopus with Stage II's settings (no reference model: the arms differ only in
what is generated). The metric is seconds per optimiser step of the whole command (the load and save, the same in
both, included); ratio = GSPO's / Octopus's. The paper: Octopus's step takes 0.72× GSPO n = 16's (a ratio of 1.39).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from bench.common import Result, Workspace, alternate, median

TARGET = 1.2  # recombining half the rows costs clearly less than generating them
ARMS = {"Octopus n=4 -> 8": ["--generations", "4", "--selection", "paper", "--mask", "changed"],
        "GSPO n=8": ["--generations", "8", "--selection", "none", "--mask", "none", "--trigger", "false"]}


def command(arguments: list[str]) -> callable:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}

    def run() -> None:
        with tempfile.TemporaryDirectory() as output:
            subprocess.run([sys.executable, "-m", "sherlock.cli", "train-rl", *arguments, "--output", output],
                           env=env, check=True, capture_output=True)

    return run


def run(workspace: Workspace, quick: bool, device) -> Result:
    steps, length = (4, 24) if quick else (12, 96)
    common = ["--model", str(workspace.model), "--data", str(workspace.data), "--max-steps", str(steps),
              "--batch-size", "8", "--steps-per-generation", "4", "--max-completion-length", str(length),
              "--o1-kl", "0", "--logging-steps", "1", "--learning-rate", "1e-5"]
    times = alternate({name: command(common + extra) for name, extra in ARMS.items()},
                      rounds=1 if quick else 3, warmup=0 if quick else 1)
    octopus, gspo = (median(times[name]) / steps for name in ARMS)
    return Result("P10 Octopus RL step", "s per step, lower is better", octopus, gspo, gspo / octopus, TARGET,
                  {"steps": steps, "max_completion_length": length, "arm_seconds": times,
                   "arms": "Octopus 4 generated + 4 recombined vs GSPO 8 generated, 8 rows per micro-step"})
