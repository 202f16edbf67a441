"""What this machine can do: the float32 matmul rate that run times are read against."""

from __future__ import annotations

import time

import torch


def matmul_flops_per_second(device: torch.device | None = None, sizes=(512, 1024, 2048), repeats: int = 5) -> float:
    """Best FLOP/s of an (n × n) @ (n × n) float32 product over ``sizes``."""
    device = device or torch.device("cpu")
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
        torch.mm(a, b)
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            torch.mm(a, b)
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best
