"""The stage registry: one :class:`Stage` record per stage.

A stage's name is its command (``sherlock <name>``), the key of its presets
(``configs/<scale>/<name>[.<variant>].yaml``) and, with ``-`` written ``_``, its module
``sherlock.stages.<name>`` and its Kubeflow component. The module holds the run function ``run_<name>``
(``-`` written ``_``), whose ``config`` parameter's type is the stage's config class; both are imported only
when the stage runs, so a step that samples data never imports the trainers. The record also names the
outputs a stage writes under its output directory: stages, components, pipelines and the experiment
runner all resolve output paths here, never by spelling them out.
"""

from __future__ import annotations

import importlib
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sherlock.config import URI_KINDS, ConfigError, check_fields, read_settings, uri_fields
from sherlock.data.llava_cot import DATA_FILE
from sherlock.data.sampling import MANIFEST
from sherlock.data.schema import PAIRS_FILE


@dataclass(frozen=True)
class Stage:
    """A stage: its name (the command, module, run function and component) and how it runs."""
    name: str
    help: str
    outputs: Mapping[str, str] = field(default_factory=dict)  # name -> path under the output ({config field})
    hands_on: str | None = None  # the output later steps read (None: the output directory itself)
    multi_rank: bool = True  # runs on N ranks under torchrun (sherlock.distributed); False: one process only
    trains: bool = False  # trains a model: its step holds a base and a trained model and checkpoints
    multi_node: bool = True  # its ranks read only their inputs (fetched on each node), never what rank 0 wrote

    @property
    def identifier(self) -> str:
        """The name with ``-`` written ``_``: the module, the run function and the Kubeflow component
        (``components/<identifier>/``).
        """
        return self.name.replace("-", "_")

    @property
    def module(self) -> str:
        """The stage's module: ``sherlock.stages.<identifier>``."""
        return f"sherlock.stages.{self.identifier}"

    @property
    def run(self) -> Callable:
        """The stage function ``run_<identifier>(config)`` of :attr:`module`."""
        return getattr(importlib.import_module(self.module), f"run_{self.identifier}")

    @property
    def config(self) -> type:
        """The stage's config dataclass: the type of :attr:`run`'s ``config`` parameter."""
        return typing.get_type_hints(self.run)["config"]

    def output(self, root: str, name: str, **fields) -> str:
        """Where output ``name`` lies under the output directory (a path or URI) ``root``."""
        if name not in self.outputs:
            raise KeyError(f"stage {self.name} has no output {name!r}; it writes {sorted(self.outputs)}")
        return f"{str(root).rstrip('/')}/{self.outputs[name].format(**fields)}"

    def handed_on(self, root: str, **fields) -> str:
        """What the stage run under ``root`` hands to later steps: :attr:`hands_on` or ``root`` itself."""
        return self.output(root, self.hands_on, **fields) if self.hands_on else str(root).rstrip("/")


_STAGES = (
    Stage("pretrain-perception", "the embedded base model: a tiny Mllama pre-trained on synthetic perception questions",
          {"model": "model", "perception": "perception.json"}, multi_rank=False, trains=True),
    Stage("sample", "Stage I data: disjoint seeded subsets D_A, D_B with a manifest",
          {"D_A": "D_A", "D_B": "D_B", "D_U": "D_U", "manifest": MANIFEST}, multi_rank=False),
    Stage("sft", "Stage I: vanilla SFT (R0), or Sherlock-SFT with --rejected", trains=True),
    Stage("sample-rejected", "Stage I: sample Y^l from R0 for D_B",
          {"rejected": "rejected.jsonl", "stats": "stats.json"}, hands_on="rejected"),
    Stage("build-preferences", "Stage II data: truncation + visual perturbation pairs",
          {"pairs": PAIRS_FILE, "stats": "stats.json"}),
    Stage("train-preferences", "Stage II/III: L_SC + α·L_DPO with dynamic β", trains=True),
    Stage("online", "Stage III: K label-free self-improvement iterations",
          {"model": "iter_{iteration}/model", "pairs": "iter_{iteration}/pairs"}, hands_on="model",
          trains=True, multi_node=False),
    Stage("octopus-sft-data", "Octopus cold start: the model's own o1 ⊕ SEP ⊕ the gold o2 (w→c : c→c = 6 : 4)",
          {"data": DATA_FILE, "stats": "stats.json"}),
    Stage("train-rl", "Octopus: online RL with rollout augmentation (GRPO/GSPO on TRL)",
          {"rewards": "rewards.jsonl"}, trains=True, multi_node=False),
    Stage("evaluate", "direct and self-correction accuracy per benchmark",
          {"metrics": "metrics.json", "table": "results.md", "plot": "accuracy_by_round.png",
           "predictions": "predictions.jsonl"}),
    Stage("diagnose", "accuracy against the blank-image and blind-prior baselines, perception, departure stages",
          {"diagnostics": "diagnostics.json"}),
    Stage("scl-pairs", "SCL data: two-turn answers typed by correctness, (−,+)/(+,−) pairs",
          {"pairs": PAIRS_FILE, "responses": "responses.jsonl", "stats": "stats.json"}),
    Stage("stic-pairs", "STIC stage 1 data: clean vs hallucinated/corrupted descriptions", {"pairs": PAIRS_FILE}),
    Stage("stic-describe", "STIC stage 2 data: description-infused prompts from the stage-1 model",
          {"data": DATA_FILE, "descriptions": "descriptions.jsonl"}),
)
STAGES: Mapping[str, Stage] = {stage.name: stage for stage in _STAGES}
CONFIGS = Path(__file__).resolve().parents[2] / "configs"  # the presets: configs/<scale>/<stage>[.<variant>].yaml


def stage(name: str) -> Stage:
    """The registered stage ``name``; an unknown name is a :class:`ConfigError` listing the known ones."""
    if name not in STAGES:
        raise ConfigError(f"unknown stage {name!r}; known: {sorted(STAGES)}")
    return STAGES[name]


def preset(name: str, scale: str = "paper", config: type | None = None) -> dict:
    """The preset ``configs/<scale>/<stage>[.<variant>].yaml`` (with the preset it ``extends``:
    :func:`sherlock.config.read_settings`) checked against its stage's config class, or against
    ``config`` for a preset of another command (``deploy``); see :func:`check_settings`.
    """
    values = read_settings(CONFIGS / scale / f"{name}.yaml")
    return check_settings(config or stage(name.split(".")[0]).config, values)


def check_settings(config: type, values: dict) -> dict:
    """``values`` (a pipeline step's settings) checked against ``config``: every key a field, every value of
    its type, and no input or output location (the pipeline wires those). Returns ``values``.
    """
    locations = {field for kind in URI_KINDS for field in uri_fields(config, kind)}
    if wired := sorted(locations & set(values)):
        raise ConfigError(f"{config.__name__} settings may not set {wired}: the pipeline passes them between steps")
    check_fields(config, values)
    return values
