"""Sherlock preference training: L_SC + α·L_DPO with a per-sample dynamic β (Eq. 6–8).

Built on ``transformers.Trainer`` (subclassed in :class:`SherlockTrainer`), not on TRL's
``DPOTrainer``: TRL 1.16 computes the DPO loss inline with one scalar ``self.beta``, its vision
collator keeps a prompt-only ``cross_attention_mask`` that breaks Mllama, it refuses
``precompute_ref_log_probs`` for vision data, and it has no way to express the 10-sequence layout.
The ``Trainer`` still gives everything around the loss: ``torchrun``/DeepSpeed, gradient
accumulation, checkpoints and resume, logging. The metric names follow TRL's DPO trainer.

The pieces: the objective and its slots (:mod:`sherlock.losses`), the layout, data set and collator
(:mod:`sherlock.training.sequences`), the sequence log-probs (:mod:`sherlock.training.packing`), the
cached reference log-probs (:mod:`sherlock.training.reference`).
"""

from __future__ import annotations

from collections import defaultdict

import torch
from transformers import Trainer

from sherlock.losses import DPO_CHOSEN, DPO_REJECTED, NUM_SEQUENCES, SC_SLOTS, SherlockLossConfig, sherlock_objective
from sherlock.training.packing import sequence_logps
from sherlock.training.sequences import labelled_tokens
from sherlock.training.setup import ConvertedCheckpointResume


class SherlockTrainer(ConvertedCheckpointResume, Trainer):
    """``Trainer`` whose loss is :func:`sherlock_objective` (L_Sherlock over the 10-sequence layout, or
    DPO with an SFT term over 2) with cached reference log-probs.
    """

    def __init__(self, *args, reference_logps: torch.Tensor, loss_config: SherlockLossConfig, **kwargs):
        super().__init__(*args, **kwargs)
        self.reference_logps = reference_logps
        self.loss_config = loss_config
        self.model_accepts_loss_kwargs = False  # the loss is a per-pair mean; let Trainer scale accumulation
        self._metrics: dict[str, list[float]] = defaultdict(list)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The Sherlock objective (Eqs. 6–8) of the batch against the cached reference log-probs."""
        policy = sequence_logps(model, inputs)
        reference = self.reference_logps[inputs["index"].cpu()].to(policy.device)
        loss, parts = sherlock_objective(policy, reference, inputs["truncation_step"], inputs["noise_level"],
                                         self.loss_config, labelled_tokens(inputs))
        self._record(policy, *parts)
        return loss

    @torch.no_grad()
    def _record(self, policy, r, beta_sc, beta_dpo, sc, dpo, sft) -> None:
        chosen = beta_dpo * r[:, DPO_CHOSEN]
        rejected = beta_dpo * r[:, DPO_REJECTED]
        values = {
            "rewards/chosen": chosen.mean(),
            "rewards/rejected": rejected.mean(),
            "rewards/margins": (chosen - rejected).mean(),
            "rewards/accuracies": (chosen > rejected).float().mean(),
            "logps/chosen": policy[:, DPO_CHOSEN].mean(),
            "logps/rejected": policy[:, DPO_REJECTED].mean(),
            "loss/sc": sc.mean(),
            "loss/dpo": dpo.mean(),
            "loss/sft": sft.mean(),
            "beta/sc_mean": beta_sc.mean(),
            "beta/sc_min": beta_sc.min(),
            "beta/sc_max": beta_sc.max(),
            "beta/dpo_mean": beta_dpo.mean(),
        }
        if r.shape[1] == NUM_SEQUENCES:
            sw_pw, sl_pl, sw_pl, sl_pw = (r[:, list(slots)] for slots in SC_SLOTS)
            v_plus_u = beta_sc[:, None] * (sw_pw - sl_pl + sw_pl - sl_pw)
            values |= {"sc/v1_plus_u1": v_plus_u[:, 0].mean(), "sc/v2_plus_u2": v_plus_u[:, 1].mean()}
        for name, value in values.items():
            self._metrics[name].append(float(value))

    def log(self, logs: dict, *args, **kwargs) -> None:
        """Add the averages of the recorded metrics since the last log (as TRL's trainers do)."""
        if self._metrics and "loss" in logs:
            logs = logs | {name: sum(v) / len(v) for name, v in self._metrics.items()}
            self._metrics.clear()
        super().log(logs, *args, **kwargs)
