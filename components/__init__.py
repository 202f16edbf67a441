"""Kubeflow Pipelines (v2) components: one per stage of the four recipes, each a thin typed wrapper.

Every component runs in the project image (kfp, the ``sherlock`` package and this one
preinstalled, so nothing is pip-installed at run time) and calls one function of :mod:`components.steps`.
Checkpoints and data sets move between steps as URIs (``s3://`` or a mounted volume) returned as
strings; evaluation emits KFP ``Metrics`` and an ``HTML`` report for the UI.

Each component has a folder ``components/<name>/``: ``component.py`` (the definition) and
``README.md`` (its docstring and signature, written by ``python -m components.readme``). The images
are fixed at compile time (:mod:`components.images`). Import a component from its folder
(``from components.sft import sft``): this package imports none of them, so a running step that
imports :mod:`components.steps` never needs KFP's authoring DSL (KFP's executor loads only its
run-time part).
"""

import importlib

# one folder each, components/<name>/, in pipeline order
COMPONENTS = ("prepare_inputs", "sample", "sft", "sample_rejected", "build_preferences", "train_preferences",
              "scl_pairs", "stic_pairs", "stic_describe", "octopus_sft_data", "train_rl", "online", "evaluate",
              "register_and_gate", "deploy")


def component(name: str):
    """The component ``name``, defined in ``components/<name>/component.py``."""
    if name not in COMPONENTS:
        raise KeyError(f"no component {name!r}; the components are {list(COMPONENTS)}")
    return getattr(importlib.import_module(f"components.{name}"), name)
