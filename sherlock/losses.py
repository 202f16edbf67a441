"""Preference losses as pure functions of summed log-prob tensors (no model needed to test them).

Notation (method spec §1): r_θ(y|c) = Σ_tokens [log π_θ(y|c) − log π_ref(y|c)] over the labelled
tokens, computed by :func:`log_ratio`. Every loss returns one value per sample; the caller reduces.
``beta`` is a float or a per-sample tensor of shape (batch,).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sherlock.reasoning import NUM_TRUNCATION_STEPS

PAPER_BETA_BASE = 0.25  # Eq. 8: β = 1 / (4·(…)) = 0.25·w
DEFAULT_ALPHA_DPO = 0.25  # paper Table 6


def log_ratio(policy_logps: torch.Tensor, reference_logps: torch.Tensor) -> torch.Tensor:
    """r_θ(y|c) = log π_θ(y|c) − log π_ref(y|c), both summed over the labelled tokens."""
    return policy_logps - reference_logps


def beta_weight(
    truncation_step: torch.Tensor, noise_level: torch.Tensor, num_steps: int = NUM_TRUNCATION_STEPS
) -> torch.Tensor:
    """w(i, n, ε) = 1 / (0.5 + (i/n)^(0.5 + ε/2)), the per-sample factor of Eq. 8."""
    step = torch.as_tensor(truncation_step, dtype=torch.float64)
    noise = torch.as_tensor(noise_level, dtype=torch.float64)
    if ((step < 1) | (step > num_steps)).any():
        raise ValueError(f"truncation step must be in 1..{num_steps}")
    if ((noise < 0) | (noise > 1)).any():
        raise ValueError("noise level must be in [0, 1]")
    return 1.0 / (0.5 + (step / num_steps) ** (0.5 + noise / 2))


def dynamic_beta(
    truncation_step: torch.Tensor,
    noise_level: torch.Tensor,
    base: float = PAPER_BETA_BASE,
    dynamic: bool = True,
    num_steps: int = NUM_TRUNCATION_STEPS,
) -> torch.Tensor:
    """β(i, n, ε) = base · w(i, n, ε) (Eq. 8; base 0.25 gives 1 / (4·(0.5 + (i/n)^(0.5+ε/2)))).

    With ``dynamic=False`` every sample gets the static ``base`` (the static-β ablation). The
    authors' released code uses base 0.025 for L_SC and 0.1 for L_DPO (spec §1, Dynamic β).
    """
    weight = beta_weight(truncation_step, noise_level, num_steps)
    return base * weight if dynamic else torch.full_like(weight, base)


def dpo_loss(chosen_log_ratio: torch.Tensor, rejected_log_ratio: torch.Tensor, beta) -> torch.Tensor:
    """L_DPO = −log σ(β · [r(Y^w|x) − r(Y^l|x)]) (sigmoid DPO; Sherlock Eq. 7, SCL §2)."""
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
