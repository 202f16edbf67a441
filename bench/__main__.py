"""``python -m bench [--quick] [--only P1,P3,…]``: every benchmark against its baseline, with ratios.

Prints one line per result, writes them as JSON (``--output``) and exits non-zero when a
benchmark fails to run (a missed target is reported, not an error). ``--quick`` runs each on a
few items in seconds: it checks that the benchmarks work, not the numbers.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

BENCHMARKS = ("P1", "P2", "P3", "P4", "P5", "P6", "P7", "P8", "serving", "P10", "P9")
GPU_ONLY = ("P9",)  # run only when named: CUDA and vLLM


def main(argv: list[str] | None = None) -> int:
    from sherlock.models.tiny import PRESETS

    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few items per benchmark (CI smoke test)")
    parser.add_argument("--only", default=",".join(b for b in BENCHMARKS if b not in GPU_ONLY),
                        help=f"comma-separated subset of {BENCHMARKS} (default: all but {GPU_ONLY}, which need a GPU)")
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS), help="model preset of the workspace")
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench"))
    parser.add_argument("--output", type=Path, default=None, help="JSON results (default: WORKDIR/results.json)")
    args = parser.parse_args(argv)
    selected = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(selected) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmarks {unknown}; known: {BENCHMARKS}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")

    import torch

    from bench import (
        p1_preference_step,
        p2_dpo,
        p3_preference_data,
        p4_pipeline,
        p5_training_efficiency,
        p6_sherlock_sft,
        p7_task_startup,
        p8_ranks,
        p9_vllm,
        p10_octopus_step,
        serving,
    )
    from bench.common import build_workspace, machine, write_results

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    workdir = args.workdir.resolve() / ("quick" if args.quick else "full")
    workspace = None
    results, failures = [], []
    runners = {"P1": p1_preference_step.run, "P2": p2_dpo.run, "P3": p3_preference_data.run,
               "P5": p5_training_efficiency.run, "P6": p6_sherlock_sft.run,
               "P7": p7_task_startup.run, "P8": p8_ranks.run, "serving": serving.run, "P9": p9_vllm.run,
               "P10": p10_octopus_step.run}
    for name in selected:
        start = time.perf_counter()
        try:
            if name == "P4":
                produced = p4_pipeline.run(workdir / f"pipeline-{int(time.time())}", args.quick)
            else:
                workspace = workspace or build_workspace(workdir / f"workspace-{args.preset}", 16 if args.quick else 64,
                                                         preset=args.preset)
                produced = runners[name](workspace, args.quick, device)
        except Exception as error:  # report every benchmark, then fail
            failures.append(name)
            print(f"{name}: FAILED: {type(error).__name__}: {error}", flush=True)
            continue
        for result in produced if isinstance(produced, list) else [produced]:
            result.details["seconds"] = round(time.perf_counter() - start, 1)
            results.append(result)
            print(result.line(), flush=True)
    output = args.output or workdir / "results.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    write_results(results, output, machine() | {"device": str(device), "quick": args.quick, "preset": args.preset})
    print(f"results: {output}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
