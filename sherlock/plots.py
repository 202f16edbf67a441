"""Plots the stages leave beside their outputs (and MLflow and the KFP reports show)."""

from __future__ import annotations

import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LOSS_PLOT, BETA_PLOT = "loss_curves.png", "beta_weights.png"


SCALE_RATIO = 5.0  # loss terms whose typical values differ more than this share no axis


def scale_groups(series: dict[str, list[float]]) -> list[list[str]]:
    """Keys grouped so that the median magnitudes within a group differ by at most :data:`SCALE_RATIO`."""
    medians = {key: statistics.median(abs(v) for v in values) for key, values in series.items()}
    groups: list[list[str]] = []
    for key in sorted(series, key=lambda k: medians[k]):
        if groups and medians[key] <= SCALE_RATIO * max(medians[groups[-1][0]], 1e-12):
            groups[-1].append(key)
        else:
            groups.append([key])
    return groups


def plot_loss_curves(log_history: list[dict], path: Path) -> bool:
    """Loss terms against the step, one panel per scale (e.g. L_SC and L_DPO apart from the SFT sum),
    from a Trainer's ``log_history``; False when there is nothing to plot.
    """
    keys = sorted({k for row in log_history for k in row if k == "loss" or k.startswith("loss/")})
    if not keys:
        return False
    points = {key: [(row["step"], row[key]) for row in log_history if key in row] for key in keys}
    groups = scale_groups({key: [value for _, value in values] for key, values in points.items()})
    figure, panels = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.5), squeeze=False)
    for axes, group in zip(panels[0], groups):
        for key in group:
            axes.plot(*zip(*points[key]), label=key)
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


def plot_rounds(metrics: dict, path: Path) -> None:
    """Accuracy per round with its standard error, integer rounds, the oracle- and verifier-gated rounds, and
    the baselines as lines.
    """
    figure, axes = plt.subplots(figsize=(5.5, 3.8))
    for index, (name, m) in enumerate(metrics["benchmarks"].items()):
        scores = [r["score"] for r in m["rounds"]]
        if None in scores:
            continue
        colour = f"C{index}"
        axes.errorbar(range(len(scores)), scores, yerr=[r.get("stderr") or 0 for r in m["rounds"]], marker="o",
                      capsize=3, color=colour, label=f"{name} (sampled direct, greedy rounds)")
        for key, style in (("oracle_gated", "--"), ("verifier_gated", "-.")):  # the headroom, per round
            if m.get(key):
                axes.plot(range(len(m[key])), m[key], linestyle=style, color=colour, alpha=0.6,
                          label=f"{name} {key.replace('_', '-')}")
        if m.get("wait") and m["wait"]["score"] is not None:  # one round's compute: drawn at round 1
            axes.plot([1], [m["wait"]["score"]], marker="^", linestyle="", color=colour, label=f"{name} Wait")
        if m.get("greedy_direct") and m["greedy_direct"]["score"] is not None:
            axes.plot([0], [m["greedy_direct"]["score"]], marker="s", linestyle="", color=colour,
                      label=f"{name} greedy direct")
        if m.get("blank_image") and m["blank_image"]["score"] is not None:
            axes.axhline(m["blank_image"]["score"], color=colour, linestyle=":", label=f"{name} blank image")
        if m.get("blind_prior") is not None:
            axes.axhline(m["blind_prior"], color=colour, linestyle="--", label=f"{name} blind prior")
    rounds = max(len(m["rounds"]) for m in metrics["benchmarks"].values())
    axes.set_xticks(range(rounds))
    axes.set_xlabel("self-correction round (0 = direct)")
    axes.set_ylabel("score")
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
