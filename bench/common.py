"""What every benchmark shares: a workspace (synthetic data, tiny model, pairs), timing, memory, results.

Each benchmark measures the project's implementation and its baseline in the same process and
run, alternating between them, and reports the ratio; absolute times on shared machines are noise.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
import torch

LIBC = ctypes.CDLL(ctypes.util.find_library("c")) if ctypes.util.find_library("c") else None


@dataclass
class Result:
    """One benchmark: the project's number, the baseline's, their ratio and the target."""

    name: str
    metric: str  # what project/baseline measure, e.g. "pairs/s"
    project: float
    baseline: float
    ratio: float  # project / baseline, oriented so that higher is better
    target: float
    details: dict = field(default_factory=dict)

    @property
    def met(self) -> bool:
        return self.ratio >= self.target

    def line(self) -> str:
        return (f"{self.name:<28} {self.metric:<22} project {self.project:10.3f}  baseline {self.baseline:10.3f}  "
                f"ratio {self.ratio:6.2f}x  target >= {self.target:g}x  {'met' if self.met else 'MISSED'}")

    def as_dict(self) -> dict:
        return asdict(self) | {"met": self.met}


@dataclass
class Workspace:
    """Synthetic data, a tiny Mllama and offline preference pairs built from them."""

    root: Path
    data: Path
    model: Path
    pairs: Path


def build_workspace(root: Path, items: int, preset: str = "tiny", suffix_tokens: int = 48) -> Workspace:
    """Data (``items`` synthetic records), a tiny model with a tokenizer trained on them, and pairs."""
    from sherlock.data.llava_cot import load_llava_cot
    from sherlock.data.synthetic import generate_synthetic
    from sherlock.models.tiny import build_tiny_vlm, tokenizer_corpus
    from sherlock.stages.build_preferences import BuildPreferencesConfig, run_build_preferences

    root.mkdir(parents=True, exist_ok=True)
    data = generate_synthetic(root / "data", items, seed=0).parent
    model = build_tiny_vlm(root / "model", tokenizer_corpus(load_llava_cot(data / "data.jsonl").records), preset=preset)
    pairs = root / "pairs"
    if not (pairs / "pairs.jsonl").exists():
        run_build_preferences(BuildPreferencesConfig(model=str(model), data=str(data), output=str(pairs),
                                                   max_new_tokens=suffix_tokens, seed=0))
    return Workspace(root, data, Path(model), pairs)


def alternate(functions: dict[str, callable], rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Wall seconds of each function per round, called in turn (after ``warmup`` untimed rounds)."""
    times: dict[str, list[float]] = {name: [] for name in functions}
    for index in range(warmup + rounds):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            if index >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def loss_tolerance(tolerance: float, dtype: torch.dtype) -> float:
    """The loss-equality bound of a benchmark in ``dtype``: ``tolerance`` in float32; in bfloat16 (8
    mantissa bits: two summation orders of a loss near 1 differ by ~1e-2) 5e-2.
    """
    return tolerance if dtype == torch.float32 else max(tolerance, 5e-2)


class PeakMemory:
    """Peak memory growth inside the block: CUDA allocator peak on a GPU, else sampled process RSS (200 Hz).

    On the CPU the block starts after ``gc.collect()`` and glibc's ``malloc_trim(0)``, which hand back
    what earlier blocks freed: otherwise a block that reuses memory the previous one left in the
    allocator shows no growth, and the arms of an alternating benchmark read in the wrong order.
    """

    def __init__(self, device: torch.device):
        self.device, self.peak, self._stop = device, 0, threading.Event()

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
            return self
        gc.collect()
        if LIBC is not None:
            LIBC.malloc_trim(0)
        process = psutil.Process()
        self.start = process.memory_info().rss
        self.peak = self.start

        def sample():
            while not self._stop.wait(0.005):
                self.peak = max(self.peak, process.memory_info().rss)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, psutil.Process().memory_info().rss)
        self.mib = (self.peak - self.start) / 2**20


def write_results(results: list[Result], path: Path, machine: dict) -> None:
    """``path`` (JSON) and beside it ``results.md``, the table docs/benchmarks.md holds."""
    path.write_text(json.dumps({"machine": machine, "results": [r.as_dict() for r in results]}, indent=2))
    rows = ["| benchmark | metric | project | baseline | ratio | target | |", "|---|---|---|---|---|---|---|"]
    rows += [f"| {r.name} | {r.metric} | {r.project:.3g} | {r.baseline:.3g} | {r.ratio:.2f}× | ≥ {r.target:.3g}× | "
             f"{'met' if r.met else 'missed'} |" for r in results]
    path.with_name("results.md").write_text("\n".join(rows) + "\n")


def machine() -> dict:
    import os
    import platform

    info = {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
