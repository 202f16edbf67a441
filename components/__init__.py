"""Kubeflow Pipelines (v2) components: one per stage of the three recipes, each a thin typed wrapper.

Every component runs in the project image (kfp and the ``sherlock`` package preinstalled, so
nothing is pip-installed at run time) and calls one function of :mod:`sherlock.pipeline_steps`.
Checkpoints and data sets move between steps as URIs (``s3://`` or a mounted volume) returned as
strings; evaluation emits KFP ``Metrics`` and an ``HTML`` report for the UI.

Each component has a folder ``components/<name>/``: ``component.py`` (the definition) and
``README.md`` (its docstring and signature, written by ``python -m components.readme``). The images
are fixed at compile time (:mod:`components.images`)."""

from components.build_preferences import build_preferences
from components.deploy import deploy
from components.evaluate import evaluate
from components.images import CPU_IMAGE, IMAGE
from components.online_iteration import online_iteration
from components.prepare_inputs import prepare_inputs
from components.register_and_gate import register_and_gate
from components.sample_data import sample_data
from components.sample_rejected import sample_rejected
from components.scl_pairs import scl_pairs
from components.sft import sft
from components.stic_describe import stic_describe
from components.stic_pairs import stic_pairs
from components.train_preferences import train_preferences

__all__ = [
    "CPU_IMAGE",
    "IMAGE",
    "prepare_inputs",
    "sample_data",
    "sft",
    "sample_rejected",
    "build_preferences",
    "train_preferences",
    "scl_pairs",
    "stic_pairs",
    "stic_describe",
    "online_iteration",
    "evaluate",
    "register_and_gate",
    "deploy",
]
