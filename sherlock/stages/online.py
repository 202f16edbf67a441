"""Stage III: online iterative self-improvement without labels (paper §4.3, Alg. 1).

One iteration k: sample unlabeled (question, image) items, let π_{k−1} answer (Y¹) and correct
itself three times (Y², Y³, Y⁴ with R(Q, Y^j)), keep an item when the answers of Y², Y³ and Y⁴ agree,
and build the pair Y^w = Y⁴, Y^l = Y¹_{<i} + a continuation on a perturbed image. π_k is trained
from π_{k−1} with π_{k−1} as the reference. Only ids, images and questions of the pool are read:
responses and gold answers are dropped on loading.
"""

from __future__ import annotations

import dataclasses
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sherlock import distributed
from sherlock.answers import answers_agree, options_in
from sherlock.chat import Context, chat_prompt
from sherlock.config import ConfigError, help_field, registered
from sherlock.data.llava_cot import load_data
from sherlock.data.preferences import PreferencePair, draw_perturbation
from sherlock.data.schema import open_image
from sherlock.decoding import SamplingSettings
from sherlock.reasoning import ReasoningFormatError, truncate
from sherlock.stages.build_preferences import PerturbationSettings, rejected_suffixes, save_pairs
from sherlock.stages.io import record_stage_config
from sherlock.stages.registry import STAGES
from sherlock.stages.train_preferences import TrainPreferencesConfig, run_train_preferences

NUM_CORRECTIONS = 3  # Y², Y³, Y⁴
# inside one iteration's directory (``output/iter_k`` of :func:`run_online`)
PAIRS_DIR, MODEL_DIR = (Path(STAGES["online"].outputs[name]).name for name in ("pairs", "model"))
JUDGES = "sherlock.judges"  # the entry-point group of answer-equivalence judges
Judge = Callable[[str, list[str]], bool]


@dataclass(frozen=True)
class UnlabeledItem:
    """What Stage III may see of a pool item: no response, no answer."""

    id: str
    image: str
    question: str
    context: Context = ()  # the earlier turns of its conversation


@dataclass(kw_only=True)
class OnlineConfig(TrainPreferencesConfig, PerturbationSettings, SamplingSettings):
    """Config of ``sherlock online`` (§3.3): pair construction and training per iteration."""
    data: str = help_field(help="unlabeled pool: data set directory or jsonl (responses/answers are ignored)",
                           uri="data")
    output: str = help_field(help="iteration directory: pairs/ and model/", uri="output")
    iteration: int = help_field(1, "k of the first iteration run: selects fresh pool items and seeds")
    iterations: int = help_field(1, "K: iterations to run, each from the previous one's model")
    num_pairs: int = help_field(5000, "pairs to collect (paper: 5k per iteration)")
    judge: str = help_field("rule", "answer-equivalence check: rule, or the name of a judge registered under the "
                                    "entry-point group sherlock.judges")
    learning_rate: float = help_field(5e-7, "peak learning rate (paper: 5e-7 online)")

    def check(self) -> None:
        """Refuse bad settings before a model is loaded."""
        self.check_perturbation()
        if self.iterations <= 0 or self.iteration <= 0:
            raise ConfigError("iteration and iterations must be positive")
        if self.num_pairs <= 0:
            raise ConfigError("num_pairs must be positive")
        if self.reference is not None:
            raise ConfigError("the online reference is always π_{k-1} (the starting model); leave reference unset")
        if self.engine != "hf":
            raise ConfigError("an online iteration samples with the model it trains: engine must be hf")
        super().check()


def rule_judge(question: str, responses: list[str]) -> bool:
    """The default judge: the same option, yes/no, number or normalised text in every response
    (:func:`sherlock.answers.answers_agree`, with the question's options).
    """
    return answers_agree(responses, options_in(question))


def load_judge(name: str) -> Judge:
    """``rule`` (:func:`rule_judge`) or a judge an installed package registers under the entry-point
    group :data:`JUDGES` (``name = "module:function"``, the function taking ``(question, responses)``).
    A run parameter only chooses among registered names: it never names a module to import.
    """
    return registered(JUDGES, name, {"rule": rule_judge}, "judge")


def unlabeled_pool(path: str | Path) -> tuple[list[UnlabeledItem], Path]:
    """The unlabeled items of ``path`` (answers and responses dropped) and their image root."""
    data = load_data(path)
    return [UnlabeledItem(r.id, r.image, r.question, r.context) for r in data.records], data.image_root


def collect_pairs(model, processor, items: list[UnlabeledItem], image_root: Path, config: OnlineConfig,
                  judge: Judge) -> tuple[list[PreferencePair], dict]:
    """Sample, self-correct, filter by agreement and build pairs until ``num_pairs`` or the pool runs out."""
    from sherlock.generation import generate, self_correct

    rng = random.Random(f"{config.seed}:{config.iteration}")
    order = rng.sample(range(len(items)), len(items))
    decoding = config.decoding(config.seed * 1000 + config.iteration)
    pairs: list[PreferencePair] = []
    stats = {"sampled": 0, "agreed": 0, "unparseable": 0, "dropped_identical": 0}
    while len(pairs) < config.num_pairs and stats["sampled"] < len(items):
        chunk = [items[i] for i in order[stats["sampled"] : stats["sampled"] + 2 * (config.num_pairs - len(pairs))]]
        stats["sampled"] += len(chunk)
        questions, contexts = [item.question for item in chunk], [item.context for item in chunk]
        images = [open_image(image_root, item) for item in chunk]
        keys = [item.id for item in chunk]
        first = generate(model, processor, [chat_prompt(q, c) for q, c in zip(questions, contexts)], images,
                         config=decoding, desc="Y1", stream="Y1", keys=keys)
        corrections = self_correct(model, processor, questions, images, first, NUM_CORRECTIONS, decoding, keys=keys,
                                   contexts=contexts)
        candidates = []
        for j, item in enumerate(chunk):
            later = [round_responses[j] for round_responses in corrections]
            if not judge(item.question, later):
                continue
            stats["agreed"] += 1
            draw = draw_perturbation(rng, config.scheme, config.steps())
            try:
                prefix_l, _ = truncate(first[j], draw.truncation_step)
                prefix_w, suffix_w = truncate(later[-1], draw.truncation_step)
            except ReasoningFormatError:
                stats["unparseable"] += 1
                continue
            candidates.append((item, images[j], draw, prefix_l, prefix_w, suffix_w))
        suffixes = rejected_suffixes(
            model, processor, [chat_prompt(c[0].question, c[0].context) for c in candidates],
            [c[1] for c in candidates],
            [c[3] for c in candidates], [c[2] for c in candidates], decoding, config.legacy_uint8_noise,
            keys=[c[0].id for c in candidates],
        ) if candidates else []
        for (item, _, draw, prefix_l, prefix_w, suffix_w), suffix_l in zip(candidates, suffixes):
            if prefix_l + suffix_l == prefix_w + suffix_w:
                stats["dropped_identical"] += 1
                continue
            pairs.append(PreferencePair(item.id, item.image, item.question, prefix_w, suffix_w, prefix_l, suffix_l,
                                        draw.truncation_step, draw.noise_level, draw.kind, item.context))
    return pairs[: config.num_pairs], stats


def run_online_iteration(config: OnlineConfig) -> Path:
    """One iteration: collect pairs with π_{k−1} = ``config.model`` and train π_k; returns π_k's directory."""
    import torch

    from sherlock.models.loading import load_vlm

    config.check()
    items, image_root = unlabeled_pool(config.data)
    model, processor = load_vlm(config.model, dtype=torch.float32, device=distributed.device(),
                                image_budget=config.image_budget())
    pairs, stats = collect_pairs(model, processor, items, image_root, config, load_judge(config.judge))
    output = Path(config.output)
    record_stage_config(config, output)
    if len(pairs) < config.num_pairs:
        stats["shortfall"] = config.num_pairs - len(pairs)
        print(f"warning: the pool gave {len(pairs)} of {config.num_pairs} pairs ({stats})", file=sys.stderr)
    save_pairs(pairs, image_root, output / PAIRS_DIR, stats)
    del model
    training_fields = {f.name for f in dataclasses.fields(TrainPreferencesConfig)}
    training = TrainPreferencesConfig(**{k: v for k, v in dataclasses.asdict(config).items() if k in training_fields}
                                        | {"data": str(output / PAIRS_DIR), "output": str(output / MODEL_DIR)})
    return run_train_preferences(training)


def run_online(config: OnlineConfig) -> Path:
    """K iterations: ``output/iter_k`` trains π_k from π_{k−1}; returns the last model's directory."""
    model = config.model
    for k in range(config.iteration, config.iteration + config.iterations):
        iteration_dir = Path(STAGES["online"].output(config.output, "model", iteration=k)).parent
        step = dataclasses.replace(config, model=str(model), iteration=k, iterations=1, output=str(iteration_dir))
        model = run_online_iteration(step)
    return Path(model)
