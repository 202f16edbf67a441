"""The ranks of one stage: a stage given N devices runs the same code in N processes.

``torch.distributed.run`` (torchrun) starts the ranks and sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; :func:`launch` is how ``sherlock <stage> --nproc-per-node N`` and the pipeline's GPU
steps call it. Under it:

- training is data-parallel through the ``Trainer`` (DDP, or DeepSpeed with ``--deepspeed``);
- generation and reference log-probs split their batches round-robin over the ranks
  (:func:`map_batches`): every batch is the one a single rank would form, so greedy outputs are the
  same as on one rank, and sampled ones too (each item draws from its own seeded stream);
- rank 0 alone writes outputs, logs to MLflow and publishes (:func:`is_main`); the others wait for
  it where they read what it wrote (:func:`barrier`).

One rank (no torchrun) is the plain process: every function here is then a no-op or the identity.
torch is imported only where a rank needs it (a data step that imports this module never loads it).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TypeVar

from tqdm.auto import tqdm

Batch = TypeVar("Batch")
Output = TypeVar("Output")


def world_size() -> int:
    """The number of ranks (torchrun's ``WORLD_SIZE``; 1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank (torchrun's ``RANK``; 0 outside torchrun)."""
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Whether this process writes outputs, logs and publishes (rank 0, or the only process)."""
    return rank() == 0


def device():
    """This rank's ``torch.device``: ``cuda:LOCAL_RANK`` where CUDA is available, else the CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _joined() -> bool:
    """Whether this process has joined a process group."""
    import torch

    return torch.distributed.is_available() and torch.distributed.is_initialized()


def init() -> None:
    """Join the process group of the ranks (NCCL on GPUs, gloo on CPUs); nothing on one rank.

    Through accelerate's ``PartialState``, as the ``Trainer`` does, so both share one group.
    """
    import torch

    if world_size() > 1 and not _joined():
        from accelerate import PartialState

        PartialState(cpu=not torch.cuda.is_available())


def barrier() -> None:
    """Wait until every rank gets here (after rank 0 wrote what the others read next)."""
    if world_size() > 1:
        import torch

        init()
        torch.distributed.barrier()


def map_batches(batches: Sequence[Batch], function: Callable[[Batch], list[Output]], desc: str) -> list[Output]:
    """``function`` over ``batches``, batch ``b`` on rank ``b % world_size``; every rank gets all the
    outputs, concatenated in batch order (as one rank computing them all would return them).

    Every rank must call it with the same batches; a rank with no batch still takes part in the merge.
    The progress bar (``desc``) counts rank 0's share.
    """
    size = world_size()
    share = [(index, batch) for index, batch in enumerate(batches) if index % size == rank()]
    mine = {index: function(batch) for index, batch in tqdm(share, desc=desc, unit=" batches", disable=not is_main())}
    if size > 1:
        import torch

        init()
        parts: list[dict | None] = [None] * size
        torch.distributed.all_gather_object(parts, mine)
        mine = {index: outputs for part in parts for index, outputs in part.items()}
    return [output for index in range(len(batches)) for output in mine[index]]


def shutdown() -> None:
    """Leave the process group at the end of a rank's work (nothing outside torchrun or before :func:`init`).

    Without it, gloo's worker threads can still hold finished work whose tensors carry Python references
    when the interpreter is torn down, and the rank aborts (SIGABRT) after doing everything right
    (pytorch/pytorch#179291).
    """
    if world_size() > 1 and _joined():
        import torch

        torch.distributed.destroy_process_group()


class RankFailed(RuntimeError):
    """A rank of :func:`launch` failed: which one, its exit code and its error (or where to read it)."""


def launch(nproc_per_node: int, module: str, argv: Sequence[str]) -> None:
    """Run ``python -m module *argv`` on ``nproc_per_node`` local ranks with torchrun (standalone
    rendezvous) and wait; a failed rank raises :class:`RankFailed` with the first failure's error.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    try:
        run(get_args_parser().parse_args(["--standalone", "--nproc-per-node", str(nproc_per_node), "-m", module,
                                          *argv]))
    except ChildFailedError as error:
        rank, failure = error.get_first_failure()
        reason = failure.message.get("message") if isinstance(failure.message, dict) else failure.message
        if failure.exitcode > 0 and not os.path.isfile(failure.error_file):  # exited before an error was recorded
            reason = "see its output above (e.g. the command's usage error)"
        raise RankFailed(f"rank {rank} failed (exit code {failure.exitcode}): {reason}") from None
