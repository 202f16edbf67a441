"""P8: the cost of ranks — a stage on 2 ranks × 1 thread against 1 rank × 2 threads, the same work.

A GPU step with N GPUs runs its stage on N ranks (:mod:`sherlock.distributed`): generation shares
its batches out, training is data-parallel. On this machine's cores the same path runs with gloo,
and this benchmark prices it: the whole command (``sherlock <stage>``, start-up, process group,
merge, rank 0's writes) with ``--nproc-per-node 2`` and one thread per rank against one process
with both threads. Two stages: sampling Y^l (generation) and preference training (2 ranks × half
the pairs per step against 1 rank × all of them: the same global batch). The metric is items per
second (responses, or pairs trained); the ratio is ranks over threads, so below 1 is overhead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from bench.common import Result, Workspace, alternate, median

TARGET = 0.8  # the ranks cost at most a fifth of the throughput
THREADS = 2


def command(stage_args: list[str], ranks: int) -> callable:
    env = os.environ | {"OMP_NUM_THREADS": str(THREADS // ranks), "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}

    def run() -> None:
        with tempfile.TemporaryDirectory() as output:
            subprocess.run([sys.executable, "-m", "sherlock.cli", *stage_args, "--output", output,
                            "--nproc-per-node", str(ranks)], env=env, check=True, capture_output=True)

    return run


def run(workspace: Workspace, quick: bool, device) -> list[Result]:
    items = 16 if quick else 64
    steps, pairs_per_step = (1, 4) if quick else (6, 8)
    data = workspace.root / "p8-data"
    if not data.exists():  # the first `items` records, as a data set of their own
        from sherlock.data.llava_cot import load_llava_cot, write_llava_cot
        from sherlock.data.sampling import link_or_copy

        records = load_llava_cot(workspace.data / "data.jsonl").records[:items]
        for record in records:
            link_or_copy(workspace.data / record.image, data / record.image)
        write_llava_cot(records, data / "data.jsonl")
    stages = {
        "generation": (["sample-rejected", "--model", str(workspace.model), "--data", str(data),
                        "--max-new-tokens", "48", "--generation-batch-size", "8"], lambda ranks: [], items),
        "training": (["train-preferences", "--model", str(workspace.model), "--data", str(workspace.pairs),
                      "--max-steps", str(steps), "--logging-steps", "1"],
                     lambda ranks: ["--batch-size", str(pairs_per_step // ranks),
                                    "--reference-cache", str(workspace.root / f"p8-reference-{ranks}")],
                     steps * pairs_per_step),
    }
    results = []
    for name, (args, per_rank, work) in stages.items():
        times = alternate({f"{ranks} ranks": command(args + per_rank(ranks), ranks) for ranks in (2, 1)},
                          rounds=1 if quick else 3, warmup=0 if quick else 1)
        ranked, single = median(times["2 ranks"]), median(times["1 ranks"])
        results.append(Result(f"P8 ranks, {name}", "items/s", work / ranked, work / single, single / ranked, TARGET,
                              {"items": work, "ranks_seconds": times["2 ranks"], "threads_seconds": times["1 ranks"],
                               "arms": f"2 ranks x 1 thread vs 1 rank x {THREADS} threads"}))
    return results
