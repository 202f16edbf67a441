"""Perception pre-training: the embedded default's base model, before Stage I.

The paper starts Stage I from an instruction-tuned VLM that already sees. The embedded default
has no such model, so this stage builds one: a tiny Mllama (preset ``embedded``) trained with
plain SFT on synthetic perception questions (describe the scene, what is in a cell, where a
colour is) and, in a second run from that model (``--init``), on reading questions too (describe
the scene, then pick facts out of the description; the cell next to a cell; an option's letter;
:func:`sherlock.data.synthetic.make_perception_item`). It never sees the 4-stage format, the
task's questions or the correction prompt: Stage I teaches those. The tokenizer learns from the
task's texts and the perception texts, so every later stage shares it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from sherlock.config import ConfigError, help_field
from sherlock.data.synthetic import (
    FAMILY_GROUPS,
    IMAGE_SIZE,
    TIERS,
    TOKENIZER_CHOICE_FRACTION,
    make_item,
    make_perception_item,
)
from sherlock.stages.io import record_stage_config
from sherlock.stages.registry import STAGES
from sherlock.training.settings import TrainSettings

PERCEPTION_FILE = STAGES["pretrain-perception"].outputs["perception"]
TOKENIZER_ITEMS = 3000  # task items (a seed namespace of their own) whose texts train the tokenizer
TOKENIZER_SEED = 2_000_003


@dataclass(kw_only=True)
class PretrainPerceptionConfig(TrainSettings):
    """Config of ``sherlock pretrain-perception``."""
    output: str = help_field(help="directory for the perception data, checkpoints and the base model", uri="output")
    preset: str = help_field("embedded", "tiny Mllama preset (sherlock.models.tiny.PRESETS)")
    num_items: int = help_field(20000, "perception questions (one image each)")
    validation_items: int = help_field(200, "held-out perception questions scored after training (greedy)")
    image_size: int = help_field(IMAGE_SIZE, "image side in pixels")
    vocab_size: int = help_field(1024, "BPE vocabulary size")
    learning_rate: float = help_field(2e-3, "peak learning rate")
    epochs: float = help_field(3.0, "number of passes over the perception questions")
    batch_size: int = help_field(32, "examples per device per step")
    families: str = help_field("perception", "question family groups, comma-separated: perception, reading "
                                             "(sherlock.data.synthetic.FAMILY_GROUPS)")
    init: str | None = help_field(None, "continue from this checkpoint (its tokenizer too) instead of a new "
                                        "tiny model", uri="model")

    def check(self) -> None:
        """Refuse bad settings before training."""
        from sherlock.models.tiny import PRESETS

        self.check_training()
        if self.preset not in PRESETS:
            raise ConfigError(f"unknown preset {self.preset!r}; choose from {sorted(PRESETS)}")
        if self.num_items <= 0:
            raise ConfigError("num_items must be positive")
        self.question_families()

    def question_families(self) -> tuple:
        """The synthetic question families of the named groups."""
        groups = [name.strip() for name in self.families.split(",")]
        if unknown := sorted(set(groups) - set(FAMILY_GROUPS)):
            raise ConfigError(f"unknown question families {unknown}; choose from {sorted(FAMILY_GROUPS)}")
        return tuple(family for name in groups for family in FAMILY_GROUPS[name])


def perception_validation(model_dir: Path, config: PretrainPerceptionConfig) -> dict:
    """Exact-answer rate per question family (the record's ``tier``) on held-out perception items (indices
    after the training ones), and for "Describe the image." the fraction whose occupied cells are right.
    """
    import torch

    from sherlock.decoding import DecodingConfig
    from sherlock.diagnostics import caption_shapes
    from sherlock.generation import generate
    from sherlock.models.loading import load_vlm

    drawn = [make_perception_item(config.seed, config.num_items + k, config.image_size, config.question_families())
             for k in range(config.validation_items)]
    model, processor = load_vlm(model_dir, dtype=torch.float32)
    answers = generate(model, processor, [r.question for r, _ in drawn], [image for _, image in drawn],
                       config=DecodingConfig(max_new_tokens=160, batch_size=64), desc="perception validation")
    families: dict[str, list[bool]] = {}
    cells = []
    for (record, _), answer in zip(drawn, answers):
        families.setdefault(record.tier, []).append(answer.strip() == record.response)
        if record.tier == "describe":
            cells.append(set(caption_shapes(answer)) == set(caption_shapes(record.response)))
    scores = {f"{family}_exact": sum(hits) / len(hits) for family, hits in sorted(families.items())}
    return scores | {"describe_cells_exact": sum(cells) / max(len(cells), 1), "num_items": len(drawn)}


def run_pretrain_perception(config: PretrainPerceptionConfig) -> Path:
    """Draw the perception data, build the tiny model and train it; returns ``output/model``.

    ``output/perception.json`` holds :func:`perception_validation` of the trained model.
    """
    from sherlock.models.loading import require_checkpoint
    from sherlock.models.tiny import build_tiny_vlm, tokenizer_corpus
    from sherlock.training.sft import SFTExample, train_sft

    config.check()
    output = Path(config.output)
    images = output / "data" / "images"
    images.mkdir(parents=True, exist_ok=True)
    examples, corpus = [], []
    families = config.question_families()
    for index in tqdm(range(config.num_items), desc="perception items", unit=" items"):
        record, image = make_perception_item(config.seed, index, config.image_size, families)
        path = output / "data" / record.image
        if not path.is_file():
            image.save(path)
        examples.append(SFTExample(record.question, record.response, str(path)))
        corpus.append(f"{record.question}\n{record.response}")
    if config.init is None:
        task = [make_item(TOKENIZER_SEED, k, TIERS[k % len(TIERS)], config.image_size, TOKENIZER_CHOICE_FRACTION)[0]
                for k in range(TOKENIZER_ITEMS)]
        base = build_tiny_vlm(output / "init", tokenizer_corpus(task) + corpus, config.preset, config.image_size,
                              config.vocab_size, config.seed)
    else:
        base = require_checkpoint(config.init)
    record_stage_config(config, output)
    model = train_sft(base, examples, output / "model", config)
    if config.validation_items:
        (output / PERCEPTION_FILE).write_text(json.dumps(perception_validation(model, config), indent=2))
    return model
