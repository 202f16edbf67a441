"""The preference objective as pure functions of summed log-prob tensors (no model needed to test them).

Notation (method spec §1): r_θ(y|c) = Σ_tokens [log π_θ(y|c) − log π_ref(y|c)] over the labelled
tokens, computed by :func:`log_ratio`. Every loss returns one value per sample; the caller reduces.
``beta`` is a float or a per-sample tensor of shape (batch,).

Every pair is scored as 10 sequences (spec §1, "How the code implements it"; built by
:mod:`sherlock.training.sequences`), in this slot order:

====  ==================  ===========  ==========
slot  prompt              prefix       suffix
====  ==================  ===========  ==========
0     x                   —            Y^w (all)
1     x                   —            Y^l (all)
2–5   R(Q, Y^l) + image   w, l, l, w   w, l, w, l
6–9   R(Q, Y^w) + image   w, l, l, w   w, l, w, l
====  ==================  ===========  ==========

Without L_SC (the "w/o L_SC" ablation, plain DPO) only slots 0 and 1 are built.
:func:`sherlock_objective` is the whole loss of a batch (Eq. 6–8) over that layout, configured by
:class:`SherlockLossConfig`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sherlock.config import help_field
from sherlock.reasoning import NUM_TRUNCATION_STEPS, beta_weight

PAPER_BETA_BASE = 0.25  # Eq. 8: β = 1 / (4·(…)) = 0.25·w
DEFAULT_ALPHA_DPO = 0.25  # paper Table 6

NUM_SEQUENCES = 10
DPO_SEQUENCES = 2  # slots 0 and 1: all L_DPO needs
DPO_CHOSEN, DPO_REJECTED = 0, 1
# (r_sw_pw, r_sl_pl, r_sw_pl, r_sl_pw) slots under the contexts (R(Y^l), R(Y^w)), see self_correction_loss.
SC_SLOTS = ((2, 6), (3, 7), (4, 8), (5, 9))

if TYPE_CHECKING:  # torch is imported where a loss is computed: the command line reads the config without it
    import torch


def log_ratio(policy_logps: torch.Tensor, reference_logps: torch.Tensor) -> torch.Tensor:
    """r_θ(y|c) = log π_θ(y|c) − log π_ref(y|c), both summed over the labelled tokens."""
    return policy_logps - reference_logps


def dynamic_beta(
    truncation_step: torch.Tensor,
    noise_level: torch.Tensor,
    base: float = PAPER_BETA_BASE,
    dynamic: bool = True,
    num_steps: int = NUM_TRUNCATION_STEPS,
) -> torch.Tensor:
    """β(i, n, ε) = base · w(i, n, ε) (Eq. 8, w: :func:`sherlock.reasoning.beta_weight`; base 0.25 gives
    1 / (4·(0.5 + (i/n)^(0.5+ε/2)))).

    With ``dynamic=False`` every sample gets the static ``base`` (the static-β ablation). The
    authors' released code uses base 0.025 for L_SC and 0.1 for L_DPO (spec §1, Dynamic β).
    """
    import torch

    step = torch.as_tensor(truncation_step, dtype=torch.float64)
    noise = torch.as_tensor(noise_level, dtype=torch.float64)
    if ((step < 1) | (step > num_steps)).any():
        raise ValueError(f"truncation step must be in 1..{num_steps}")
    if ((noise < 0) | (noise > 1)).any():
        raise ValueError("noise level must be in [0, 1]")
    weight = beta_weight(step, noise, num_steps)
    return base * weight if dynamic else torch.full_like(weight, base)


def dpo_loss(chosen_log_ratio: torch.Tensor, rejected_log_ratio: torch.Tensor, beta) -> torch.Tensor:
    """L_DPO = −log σ(β · [r(Y^w|x) − r(Y^l|x)]) (sigmoid DPO; Sherlock Eq. 7, SCL §2)."""
    import torch.nn.functional as F

    return -F.logsigmoid(beta * (chosen_log_ratio - rejected_log_ratio))


def self_correction_loss(
    r_sw_pw: torch.Tensor,
    r_sl_pl: torch.Tensor,
    r_sw_pl: torch.Tensor,
    r_sl_pw: torch.Tensor,
    beta,
) -> torch.Tensor:
    """Trajectory-level self-correction loss L_SC = (1 − v₁ − u₁)² + (1 − v₂ − u₂)² (Eq. 6–7).

    Each argument has shape (batch, 2): the last axis is the correction context, R(Y^l) for
    index 0 and R(Y^w) for index 1. The names say suffix given prefix, e.g. ``r_sw_pl`` is
    r(Y^w_{≥i} | R(·), Y^l_{<i}). Per context:

        v = β [r(Y^w_{≥i} | Y^w_{<i}) − r(Y^l_{≥i} | Y^l_{<i})]
        u = β [r(Y^w_{≥i} | Y^l_{<i}) − r(Y^l_{≥i} | Y^w_{<i})]
    """
    import torch

    beta = torch.as_tensor(beta, dtype=r_sw_pw.dtype, device=r_sw_pw.device)
    if beta.ndim == 1:
        beta = beta[:, None]
    v = beta * (r_sw_pw - r_sl_pl)
    u = beta * (r_sw_pl - r_sl_pw)
    return ((1 - v - u) ** 2).sum(dim=-1)


def sherlock_loss(
    sc_loss: torch.Tensor,
    dpo: torch.Tensor,
    alpha: float = DEFAULT_ALPHA_DPO,
    use_sc: bool = True,
    use_dpo: bool = True,
) -> torch.Tensor:
    """L_Sherlock = L_SC + α · L_DPO (α = 0.25, paper Table 6); switches drop either term (ablations)."""
    import torch

    if not (use_sc or use_dpo):
        raise ValueError("at least one of L_SC and L_DPO must be used")
    loss = torch.zeros_like(sc_loss if use_sc else dpo)
    if use_sc:
        loss = loss + sc_loss
    if use_dpo:
        loss = loss + alpha * dpo
    return loss


def sft_loss(policy_chosen_logps: torch.Tensor, chosen_tokens: torch.Tensor | None = None) -> torch.Tensor:
    """−log π_θ(y_w|x) per pair: summed over y_w's tokens, or with ``chosen_tokens`` the batch's token mean.

    The sum is STIC's regulariser (α = 1/1024 on Σ log π_θ(y_w), spec §3 Stage-1 loss). The token
    mean is TRL's ``loss_type="sft"`` (every labelled y_w token of the batch weighs the same; the
    value is repeated for each pair), the form taken here for SCL's ``sft_beta`` term (spec §2).
    """
    if chosen_tokens is None:
        return -policy_chosen_logps
    return (-policy_chosen_logps.sum() / chosen_tokens.sum().clamp(min=1)).expand_as(policy_chosen_logps)


@dataclass(kw_only=True)
class SherlockLossConfig:
    """Loss settings: β bases (Eq. 8), α, the dynamic-β switch, the term switches (ablations) and
    the weight λ of an SFT term on the preferred response (STIC, SCL; 0 for Sherlock).

    The one declaration of the loss fields: the training stage's config inherits them and the
    pipelines check their settings against it at compile time.
    """

    sc_beta: float = help_field(PAPER_BETA_BASE, "β base of L_SC (paper 0.25, released code 0.025)")
    dpo_beta: float = help_field(0.1, "β base of L_DPO")
    alpha: float = help_field(DEFAULT_ALPHA_DPO, "weight α of L_DPO")
    dynamic_beta: bool = help_field(True, "β(i, n, ε) per sample (false: static β ablation)")
    use_sc: bool = help_field(True, "include L_SC (false: w/o L_SC ablation)")
    use_dpo: bool = help_field(True, "include L_DPO (false: w/o L_DPO ablation)")
    sft_weight: float = help_field(0.0, "weight λ of an SFT term on the preferred response (STIC 1/1024, SCL 0.1)")
    sft_per_token: bool = help_field(False, "SFT term per token of the batch (TRL/ms-swift form) instead of summed")

    def loss(self) -> SherlockLossConfig:
        """The loss fields alone (of a config that inherits them)."""
        return SherlockLossConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(SherlockLossConfig)})


def sherlock_objective(policy: torch.Tensor, reference: torch.Tensor, truncation_step: torch.Tensor,
                       noise_level: torch.Tensor, cfg: SherlockLossConfig, tokens: torch.Tensor | None = None):
    """Mean L = L_SC + α · (L_DPO + λ · L_SFT(y_w)) of a batch from its (pairs, slots) log-probs.

    λ = 0 is L_Sherlock (Eq. 7). With 2 slots (L_SC off) and α = 1 it is DPO with an SFT term:
    STIC stage 1 (static β = 0.1, λ = 1/1024 on the summed log-likelihood) and SCL (β = 0.1,
    λ = ``sft_beta`` per token; ``tokens``, the labelled-token counts, are needed then). L_SC is
    reported as 0 without its slots. Returns ``(loss, (r, β_SC, β_DPO, L_SC, L_DPO, L_SFT))`` with
    the per-pair parts for logging.
    """
    import torch

    if cfg.sft_weight and cfg.sft_per_token and tokens is None:
        raise ValueError("the per-token SFT term needs the labelled-token counts")
    r = policy - reference
    beta_sc = dynamic_beta(truncation_step, noise_level, cfg.sc_beta, cfg.dynamic_beta).to(r)
    beta_dpo = dynamic_beta(truncation_step, noise_level, cfg.dpo_beta, cfg.dynamic_beta).to(r)
    dpo = dpo_loss(r[:, DPO_CHOSEN], r[:, DPO_REJECTED], beta_dpo)
    if r.shape[1] == DPO_SEQUENCES:
        if cfg.use_sc:
            raise ValueError("L_SC needs the 10-sequence layout; the batch has only chosen and rejected")
        sc = torch.zeros_like(dpo)
    else:
        sc = self_correction_loss(*(r[:, list(slots)] for slots in SC_SLOTS), beta_sc)
    per_token = cfg.sft_per_token and tokens is not None
    sft = sft_loss(policy[:, DPO_CHOSEN], tokens[:, DPO_CHOSEN] if per_token else None)
    loss = sherlock_loss(sc, dpo + cfg.sft_weight * sft if cfg.sft_weight else dpo, cfg.alpha, cfg.use_sc,
                         cfg.use_dpo).mean()
    return loss, (r, beta_sc, beta_dpo, sc, dpo, sft)
