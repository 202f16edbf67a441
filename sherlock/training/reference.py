"""Reference log-probs: log π_ref of every pair's sequences from a frozen copy of the starting checkpoint,
computed once per (model, data) and cached on disk.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from sherlock import distributed
from sherlock.data.preferences import pairs_digest
from sherlock.data.schema import file_digest
from sherlock.losses import NUM_SEQUENCES
from sherlock.training.packing import sequence_logps
from sherlock.training.sequences import PreferenceDataset

REFERENCE_CACHE_VERSION = "2"  # bump when the sequence layout or tokenisation changes


def model_digest(model_dir: str | Path) -> str:
    """sha256 over a checkpoint's weight files (names and bytes)."""
    sha = hashlib.sha256()
    files = sorted(Path(model_dir).glob("*.safetensors")) or sorted(Path(model_dir).glob("*.bin"))
    if not files:
        raise FileNotFoundError(f"no weight files in {model_dir}")
    for path in files:
        sha.update(path.name.encode() + file_digest(path).encode())
    return sha.hexdigest()


def reference_cache_path(cache_dir: str | Path, reference_dir: str | Path, data_dir: str | Path,
                         num_slots: int = NUM_SEQUENCES) -> Path:
    """Cache file keyed by the reference model's digest, the pairs' digest and the layout (version, slots)."""
    key = hashlib.sha256(
        f"{model_digest(reference_dir)}:{pairs_digest(data_dir)}:{REFERENCE_CACHE_VERSION}:{num_slots}".encode()
    ).hexdigest()[:32]
    return Path(cache_dir) / f"reference-logps-{key}.pt"


@torch.no_grad()
def compute_reference_logps(model, dataset: PreferenceDataset, collator, batch_size: int = 8) -> torch.Tensor:
    """Log π_ref of every pair's sequences, shape (pairs, slots), in data set order; under torchrun the
    batches are shared out over the ranks and every rank gets the whole table.
    """
    model.eval()
    def batch_logps(start: int) -> list[torch.Tensor]:
        batch = collator([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        logps = sequence_logps(model, {k: v.to(model.device) for k, v in batch.items()}).cpu()
        return list(logps)

    return torch.stack(distributed.map_batches(range(0, len(dataset), batch_size), batch_logps, "reference log-probs"))


def cached_reference_logps(path: Path, compute) -> torch.Tensor:
    """Load the cache at ``path`` or ``compute()`` it (every rank) and write it atomically (rank 0)."""
    if path.is_file():
        return torch.load(path)
    logps = compute()
    if distributed.is_main():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(logps, partial)
        os.replace(partial, path)
    return logps
