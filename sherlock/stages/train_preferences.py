"""Stage II/III training: the Sherlock objective L_SC + α·L_DPO with dynamic β (Eq. 6–8).

The same stage trains the sibling recipes' preference steps (``configs/*/train-preferences.scl.yaml``,
``configs/*/train-preferences.stic.yaml``): DPO with a static β and an SFT term on the preferred
response.

The policy starts from ``model``; the reference is a frozen copy of ``reference`` (default: the same
checkpoint). Its log-probs are computed once and cached under ``reference_cache`` keyed by the
reference weights and the pairs file, so ablations on the same data reuse them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sherlock import distributed
from sherlock.config import ConfigError, help_field
from sherlock.data.preferences import read_pairs
from sherlock.losses import DPO_SEQUENCES, NUM_SEQUENCES, SherlockLossConfig
from sherlock.stages.io import record_stage_config
from sherlock.training.settings import TrainSettings

REFERENCE_CACHE_DIR = "reference_cache"


@dataclass(kw_only=True)
class TrainPreferencesConfig(SherlockLossConfig, TrainSettings):
    """Training settings and the loss fields (:class:`SherlockLossConfig`, passed on by :meth:`loss`)."""

    model: str = help_field(help="starting checkpoint (Sherlock-SFT offline, π_{k-1} online)", uri="model")
    data: str = help_field(help="preference directory written by build-preferences or online", uri="data")
    output: str = help_field(help="directory for checkpoints and the trained model", uri="output")
    reference: str | None = help_field(None, "reference checkpoint (default: the starting checkpoint)", uri="model")
    reference_cache: str | None = help_field(None, "directory of cached reference log-probs (default: output/)")
    learning_rate: float = help_field(5e-6, "peak learning rate (paper: 5e-6 offline, 5e-7 online)")
    batch_size: int = help_field(4, "pairs per device per step (10 sequences each; 2 without L_SC)")
    warmup_ratio: float = help_field(0.0, "fraction of steps with linear warm-up")

    def check(self) -> None:
        """Refuse bad settings before training."""
        from sherlock.models.loading import require_checkpoint

        self.check_training()
        if not (self.use_sc or self.use_dpo):
            raise ConfigError("use_sc and use_dpo are both false: the loss would be empty")
        for name in ("sc_beta", "dpo_beta"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if self.sft_weight < 0:
            raise ConfigError("sft_weight must be >= 0")
        for checkpoint in (self.model, self.reference or self.model):
            require_checkpoint(checkpoint)


def run_train_preferences(config: TrainPreferencesConfig) -> Path:
    """Train on the pairs in ``config.data``; saves the model and processor to ``config.output``."""
    import torch

    from sherlock.models.loading import load_vlm
    from sherlock.protocol import read_protocol
    from sherlock.training.memory import plan_training_step
    from sherlock.training.preference_trainer import SherlockTrainer
    from sherlock.training.reference import cached_reference_logps, compute_reference_logps, reference_cache_path
    from sherlock.training.sequences import PreferenceCollator, PreferenceDataset, sequence_extent
    from sherlock.training.setup import prepare_model, train_and_save, training_arguments

    config.check()
    pairs = read_pairs(config.data)
    model, processor = load_vlm(config.model, dtype=torch.float32, image_budget=config.image_budget())
    num_slots = NUM_SEQUENCES if config.use_sc else DPO_SEQUENCES
    rows, longest = sequence_extent(pairs, processor, num_slots)
    plan_training_step(config.model, config, longest, rows_per_example=rows)  # on CPU still: refuse before a GPU
    dataset = PreferenceDataset(pairs, config.data, processor, num_slots)
    collator = PreferenceCollator(processor.tokenizer.pad_token_id)
    reference_dir = config.reference or config.model
    cache = reference_cache_path(config.reference_cache or Path(config.output) / REFERENCE_CACHE_DIR,
                                 reference_dir, config.data, dataset.num_slots)

    def compute():
        reference, _ = load_vlm(reference_dir, dtype=torch.float32, device=distributed.device())
        return compute_reference_logps(reference, dataset, collator, config.batch_size)

    # before the training arguments: under ZeRO-3 they make every later from_pretrained partition its weights
    reference_logps = cached_reference_logps(cache, compute)
    args = training_arguments(config, config.output, remove_unused_columns=False)

    trainer = SherlockTrainer(
        model=prepare_model(model, config), args=args, train_dataset=dataset, data_collator=collator,
        processing_class=processor, reference_logps=reference_logps, loss_config=config.loss(),
    )
    record_stage_config(config, config.output)
    return train_and_save(trainer, config, config.output, processor, read_protocol(config.model))
