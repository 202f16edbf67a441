"""What this machine can do: the float32 matmul rate that run times are read against, a free local port."""

from __future__ import annotations

import socket
import time

import torch


def matmul_flops_per_second(device: torch.device | None = None, sizes=(512, 1024, 2048), repeats: int = 5,
                            dtype: torch.dtype = torch.float32) -> float:
    """Best FLOP/s of an (n × n) @ (n × n) product in ``dtype`` over ``sizes``."""
    device = device or torch.device("cpu")
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
