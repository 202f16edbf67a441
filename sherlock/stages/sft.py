"""Stage I: vanilla SFT (R0 on D_A) and Sherlock-SFT (from the base model on D_B, Eq. 3).

With ``rejected`` unset the stage trains x → Y^w only (R0). With ``rejected`` (the file written by
:mod:`sherlock.stages.sample_rejected`), each record adds a correction sequence R(Q, Y^l) + image → Y^w,
so the loss is −E[log π(Y^w|x) + log π(Y^w|x, Y^l, t)].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sherlock.config import help_field
from sherlock.data.llava_cot import load_data
from sherlock.data.schema import read_jsonl
from sherlock.reasoning import SC_CLOSE, SC_OPEN
from sherlock.stages.io import record_stage_config
from sherlock.training.settings import TrainSettings


@dataclass(kw_only=True)
class SFTStageConfig(TrainSettings):
    """Config of ``sherlock sft`` (R0, or Sherlock-SFT with ``rejected``)."""
    model: str = help_field(help="starting checkpoint (the base model)", uri="model")
    data: str = help_field(help="data set directory or jsonl (D_A for R0, D_B for Sherlock-SFT)", uri="data")
    output: str = help_field(help="directory for checkpoints and the trained model", uri="output")
    rejected: str | None = help_field(None, "jsonl of R0 samples Y^l (id, rejected): turns on Sherlock-SFT",
                                      uri="data")
    length_balanced: bool = help_field(True, "split each step's batch_size × grad_accum examples into grad_accum "
                                       "micro-batches of similar length (no effect at grad_accum 1)")
    sc_tag_tokens: bool = help_field(False, "make Octopus's <self-correction> and </self-correction> single tokens "
                                     "of the model before training (octopus-spec §7: a separator the policy can "
                                     "write in one step; the cold-start SFT)")

    def check(self) -> None:
        """Refuse bad settings and a missing checkpoint before training."""
        from sherlock.models.loading import require_checkpoint

        self.check_training()
        require_checkpoint(self.model)


def run_sft(config: SFTStageConfig) -> Path:
    """Train and save the model, which self-corrects as its data's protocol says (:mod:`sherlock.protocol`:
    Octopus's cold-start data continues, any other set prompts); returns the output directory.
    """
    from sherlock.protocol import read_protocol
    from sherlock.training.sft import correction_examples, examples_from_records, train_sft

    config.check()
    data = load_data(config.data)
    examples = examples_from_records(data.records, data.image_root)
    if config.rejected is not None:
        rejected = {row["id"]: row["rejected"] for row in read_jsonl(config.rejected)}
        examples += correction_examples(data.records, rejected, data.image_root)
    record_stage_config(config, config.output)
    return train_sft(config.model, examples, config.output, config, config.length_balanced,
                     (SC_OPEN, SC_CLOSE) if config.sc_tag_tokens else (), read_protocol(config.data))
