"""accelerate's per-step notice kept out of the training logs, and nothing else."""

import logging

import torch

from sherlock.training.setup import REMAINDER_NOTICE


def test_accelerates_remainder_notice_is_dropped_and_nothing_else(caplog):
    """The notice as accelerate logs it (gather_for_metrics at the end of a dataloader whose dataset has no
    length), seen without the filter and gone with it; another notice of that logger still passes."""
    from accelerate import Accelerator

    class Rows(torch.utils.data.Dataset):  # no __len__: the sampler says which rows, as a bucketing one does
        def __getitem__(self, index):
            return torch.tensor([index])

    accelerator = Accelerator(cpu=True)
    loader = accelerator.prepare(torch.utils.data.DataLoader(Rows(), sampler=[0, 1, 2], batch_size=2))
    caplog.set_level(logging.INFO, logger="accelerate.accelerator")
    logger = logging.getLogger("accelerate.accelerator")

    def gather_all():
        for batch in loader:
            accelerator.gather_for_metrics(batch)

    logger.removeFilter(REMAINDER_NOTICE)
    gather_all()
    assert "returning gathered tensors" in caplog.text
    caplog.clear()
    logger.addFilter(REMAINDER_NOTICE)
    try:
        gather_all()
        logger.info("another notice")
    finally:
        logger.removeFilter(REMAINDER_NOTICE)
    assert "returning gathered tensors" not in caplog.text and "another notice" in caplog.text
