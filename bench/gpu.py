"""The prepared GPU run: what 2 CPU cores cannot measure, in one run of at most 8 minutes and one JSON.

    python -m bench.gpu --output gpu.json               # on a CUDA GPU, in bfloat16
    python -m bench.gpu --dry-run --output dry.json     # the same steps on the CPU, tiny and short

On a GPU machine that has torch, transformers, accelerate and PEFT but nothing else, the rest of the
lock travels as wheels (``pip download --no-deps --only-binary :all: --python-version 3.12 -d
build/gpu-wheels -c requirements/constraints.txt trl datasets psutil``; then there
``pip install --no-index --find-links build/gpu-wheels trl datasets psutil``) and the project runs
from the source tree (``PYTHONPATH=.``). What it measures (docs/benchmarks.md, "On a GPU"):

1. the versions it runs on (Python, torch and its CUDA, transformers, TRL, PEFT, accelerate, the GPU);
2. the GPU's matmul rate in bfloat16 (best square ``torch.mm``): the MFU denominator;
3. P1 in bfloat16 on the ``small`` Mllama and on the tiny Qwen3-VL: the project's step (contexts packed
   under a 4-D mask, which sends SDPA to its memory-efficient kernel), the same objective from whole
   rows (no mask beyond padding: the kernel SDPA picks for them), the per-sequence baseline; pairs/s and
   peak GPU memory of each, and the MFU of the packed step;
4. the golden check in bfloat16: the packed log-probs against whole rows', relative to their size;
5. P2 (the plain DPO step against TRL's ``DPOTrainer``) and P5 (the SFT step's MFU) in bfloat16.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

GOLDEN_RELATIVE = 2e-2  # bfloat16 keeps 8 mantissa bits: a sum of ~100 token log-probs moves by ~1 %


def versions(device) -> dict:
    """The software and hardware the run measured on."""
    import accelerate
    import peft
    import torch
    import transformers
    import trl

    return {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "transformers": transformers.__version__, "trl": trl.__version__, "peft": peft.__version__,
            "accelerate": accelerate.__version__,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}


def golden_check(workspace, model_dir, device, dtype) -> dict:
    """Packed contexts against whole rows on the same batch (eval mode, no gradient), in ``dtype``."""
    import torch

    from sherlock.data.preferences import read_pairs
    from sherlock.models.loading import load_vlm
    from sherlock.training.packing import full_row_logps, packed_logps
    from sherlock.training.sequences import PreferenceCollator, PreferenceDataset

    model, processor = load_vlm(model_dir, dtype=dtype, device=str(device))
    dataset = PreferenceDataset(read_pairs(workspace.pairs)[:4], workspace.pairs, processor)
    batch = PreferenceCollator(processor.tokenizer.pad_token_id)([dataset[i] for i in range(len(dataset))])
    batch = {k: v.to(device) for k, v in batch.items()}
    with torch.no_grad():
        packed, whole = packed_logps(model.eval(), batch).float(), full_row_logps(model, batch).float()
    relative = float(((packed - whole).abs() / whole.abs().clamp(min=1.0)).max())
    return {"max_absolute": float((packed - whole).abs().max()), "max_relative": relative,
            "tolerance_relative": GOLDEN_RELATIVE, "within": relative <= GOLDEN_RELATIVE, "sequences": len(whole)}


def run(output: Path, dry_run: bool) -> dict:
    """Every measurement of the module docstring, written to ``output`` as it lands."""
    import torch

    from bench import p1_preference_step, p2_dpo, p5_training_efficiency
    from bench.common import build_workspace
    from sherlock.data.llava_cot import load_llava_cot
    from sherlock.machine import matmul_flops_per_second
    from sherlock.models.families import FAMILIES
    from sherlock.models.tiny import tokenizer_corpus

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not dry_run:
        raise SystemExit("no CUDA GPU here: run with --dry-run to check the script on the CPU")
    dtype = torch.bfloat16
    steps, batch_size = (1, 2) if dry_run else (8, 4)
    root = output.parent / ("gpu-dry-run" if dry_run else "gpu")
    report: dict = {"versions": versions(device), "dry_run": dry_run, "dtype": "bfloat16", "results": {}}

    def land(name: str, value) -> None:
        report["results"][name] = value
        output.write_text(json.dumps(report, indent=2, default=str))
        print(f"{name}: {json.dumps(value, default=str)[:400]}", flush=True)

    start = time.perf_counter()
    peak = matmul_flops_per_second(device, dtype=dtype)
    land("matmul_bf16_tflops", peak / 1e12)
    workspace = build_workspace(root / "workspace", 16 if dry_run else 64, preset="tiny" if dry_run else "small")
    qwen = root / "qwen3_vl"
    if not (qwen / "config.json").exists():
        FAMILIES["qwen3_vl"].build(qwen, tokenizer_corpus(load_llava_cot(workspace.data / "data.jsonl").records))
    for family, model_dir in (("mllama", workspace.model), ("qwen3_vl", qwen)):
        land(f"golden_{family}", golden_check(workspace, model_dir, device, dtype))
        results = p1_preference_step.measure(workspace, model_dir, family, steps, batch_size, device, dtype=dtype,
                                             whole_rows=True, count_flops=True)
        details = results[0].details
        seconds_per_step = batch_size / details["pairs_per_second"]["project"]
        land(f"P1_{family}", {"pairs_per_second": details["pairs_per_second"],
                              "peak_memory_mib": details["peak_memory_mib"],
                              "max_loss_difference": details["max_loss_difference"],
                              "mfu_packed": details["flops_per_step"] / seconds_per_step / peak})
    p2 = p2_dpo.measure(workspace, steps=steps, batch_size=batch_size * 2, device=device, dtype=dtype)
    land("P2", {"project": p2.project, "baseline": p2.baseline, "ratio": p2.ratio} | p2.details)
    p5 = p5_training_efficiency.measure(workspace, batch_size=batch_size * 4, steps=max(steps, 2), device=device,
                                        dtype=dtype)
    land("P5_sft", {"mfu": p5.ratio, "achieved_gflops": p5.project} | p5.details)
    land("seconds", time.perf_counter() - start)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("runs/gpu.json"))
    parser.add_argument("--dry-run", action="store_true", help="on the CPU, tiny and short: checks the script")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    run(args.output.resolve(), args.dry_run)
    print(f"results: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
