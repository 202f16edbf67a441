"""P4: the embedded end-to-end pipeline (``make demo``) on this machine, with its per-stage breakdown.

Runs ``python -m pipelines.run_local`` (``--quick``: the reduced configuration compiled with K = 0)
in a fresh work directory and reads its summary. The baseline is the 15-minute budget; the ratio
is budget / wall time (≥ 1: within budget).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from bench.common import Result

BUDGET_MINUTES = 15.0
ROOT = Path(__file__).resolve().parents[1]


def run(workdir: Path, quick: bool) -> Result:
    command = [sys.executable, "-m", "pipelines.run_local", "--workdir", str(workdir)]
    if quick:
        command += ["--quick", "--online-iterations", "0"]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    minutes = (time.perf_counter() - start) / 60
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[1:])} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    summary = json.loads((workdir / "summary.json").read_text())
    return Result("P4 embedded pipeline", "minutes", minutes, BUDGET_MINUTES, BUDGET_MINUTES / minutes, 1.0,
                  {"command": " ".join(["python", *command[1:]]), "pipeline_seconds": summary["total_seconds"],
                   "stage_seconds": summary["stage_seconds"], "champion_version": summary["champion_version"],
                   "output": result.stdout[-4000:]})
