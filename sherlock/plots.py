"""Plots the stages leave beside their outputs (and MLflow and the KFP reports show)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LOSS_PLOT, BETA_PLOT = "loss_curves.png", "beta_weights.png"


def plot_loss_curves(log_history: list[dict], path: Path) -> bool:
    """Loss terms against the step, from a Trainer's ``log_history``; False when there is nothing to plot."""
    keys = sorted({k for row in log_history for k in row if k == "loss" or k.startswith("loss/")})
    if not keys:
        return False
    figure, axes = plt.subplots(figsize=(5, 3.5))
    for key in keys:
        points = [(row["step"], row[key]) for row in log_history if key in row]
        axes.plot(*zip(*points), label=key)
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def plot_beta_histogram(weights: list[float], path: Path) -> None:
    """Histogram of the per-sample dynamic β weights w(i, ε) of a preference set (Eq. 6)."""
    figure, axes = plt.subplots(figsize=(5, 3.5))
    axes.hist(weights, bins=20)
    axes.set_xlabel("β weight w(i, ε)")
    axes.set_ylabel("pairs")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
