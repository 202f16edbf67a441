"""The recipes' wiring, written once: which stage runs as which step, on which inputs, with which preset.

A recipe is a function of a ``run`` callback, ``run(step, preset, title, **inputs) -> handle``: run
the stage of ``preset`` (``sft.r0`` is stage ``sft``) as step ``step`` (its output folder) on
``inputs`` (config fields: the base model, a subset, or what an earlier step handed on) and return
what the step hands on to later steps (:meth:`sherlock.stages.registry.Stage.handed_on`). The
Kubeflow pipelines (``pipelines/*.py``) pass a ``run`` that adds a component task and returns its
output; the research harness (:mod:`experiments.harness`) one that calls the stage function and returns a
path. Each recipe returns the checkpoints to evaluate, in order, by name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Run = Callable[..., Any]  # run(step, preset, title, **inputs) -> handle


def sherlock(run: Run, base, d_a, d_b, d_u, online_iterations: int) -> dict[str, Any]:
    """Sherlock (paper §3, Fig. 2): R0 → Y^l → Sherlock-SFT (Eq. 3) → offline pairs (Alg. 1) → L_SC +
    α·L_DPO with dynamic β (Eqs. 4–8) → K label-free online iterations (§3.3).

    Returns ``{"r0", "sherlock-sft", "offline", "online-1", …}``.
    """
    r0 = run("r0", "sft.r0", "R0 (SFT on D_A)", model=base, data=d_a)
    rejected = run("rejected", "sample-rejected", "sample Y^l (R0 on D_B)", model=r0, data=d_b)
    sherlock_sft = run("sherlock-sft", "sft.sherlock", "Sherlock-SFT", model=base, data=d_b, rejected=rejected)
    pairs = run("preferences", "build-preferences", "offline preference pairs", model=sherlock_sft, data=d_a)
    offline = run("sherlock-offline", "train-preferences.offline", "Sherlock offline training", model=sherlock_sft,
                  data=pairs)
    checkpoints = {"r0": r0, "sherlock-sft": sherlock_sft, "offline": offline}
    model = offline
    for k in range(1, online_iterations + 1):
        model = run(f"online-{k}", "online", f"online iteration {k}", model=model, data=d_u, iteration=k)
        checkpoints[f"online-{k}"] = model
    return checkpoints


def starting_model(run: Run, warm_start: bool, base, d_a) -> tuple[str, Any]:
    """``(name, model)`` a sibling recipe starts from: R0 (SFT on D_A) or, without the warm start, the base
    model itself (one that already follows instructions).
    """
    if not warm_start:
        return "base", base
    return "r0", run("r0", "sft.r0", "R0 (SFT on D_A)", model=base, data=d_a)


def scl(run: Run, start, d_b) -> dict[str, Any]:
    """SCL (arXiv 2410.04055): two-turn answers on D_B typed by correctness → DPO with an SFT term."""
    pairs = run("scl-pairs", "scl-pairs", "SCL pairs (two turns on D_B)", model=start, data=d_b)
    return {"scl": run("scl", "train-preferences.scl", "SCL DPO training", model=start, data=pairs)}


def stic(run: Run, start, d_a, d_u) -> dict[str, Any]:
    """STIC: description pairs on unlabeled D_U → stage 1 (DPO + regulariser) → the stage-1 model's
    descriptions of a D_A subset → stage 2 (description-infused SFT).
    """
    pairs = run("stic-pairs", "stic-pairs", "STIC stage 1 pairs (unlabeled D_U)", model=start, data=d_u)
    stage1 = run("stic-stage1", "train-preferences.stic", "STIC stage 1 (DPO + regulariser)", model=start,
                 data=pairs)
    described = run("stic-described", "stic-describe", "STIC stage 2 data (described D_A subset)", model=stage1,
                    data=d_a)
    stage2 = run("stic-stage2", "sft.stic", "STIC stage 2 (description-infused SFT)", model=stage1, data=described)
    return {"stic-stage1": stage1, "stic": stage2}


def octopus_cold_start(run: Run, start, d_b):
    """Octopus's cold start (octopus-spec §2.1): the starting model's own o1 on D_B with gold-conditioned o2
    (w→c : c→c ≈ 6 : 4) → SFT on ``o1 ⊕ SEP ⊕ o2`` with the tags as single tokens. Returns the checkpoint.
    """
    data = run("octopus-sft-data", "octopus-sft-data", "Octopus cold-start data (own o1, gold o2 on D_B)",
               model=start, data=d_b)
    return run("octopus-sft", "sft.octopus", "Octopus cold-start SFT", model=start, data=data)


def octopus(run: Run, start, d_b, d_u) -> dict[str, Any]:
    """Octopus (arXiv 2602.08503, octopus-spec §2): the starting model's own samples on D_B with gold second
    attempts → cold-start SFT on ``o1 ⊕ SEP ⊕ o2`` (the tags made single tokens) → RL Stage I (o1 masked, KL on
    o1 against the cold-start model) → RL Stage II (o1 masked where c(o1) = c(o2)), both on D_U's gold answers.
    """
    cold = octopus_cold_start(run, start, d_b)
    stage1 = run("octopus-stage1", "train-rl.octopus-1", "Octopus RL Stage I", model=cold, data=d_u)
    return {"octopus-sft": cold, "octopus-stage1": stage1,
            "octopus": run("octopus-stage2", "train-rl.octopus-2", "Octopus RL Stage II", model=stage1, data=d_u)}
