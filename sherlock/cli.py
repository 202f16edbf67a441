"""``sherlock`` command line: data, tiny model, the training stages, evaluation and the embedded job.

Every stage command takes ``--config FILE.yaml`` and one ``--field-name VALUE`` flag per config
field; flags override the file, the file overrides the defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from sherlock.data.llava_cot import DEFAULT_MAX_BAD_FRACTION, DataQualityError, load_llava_cot
from sherlock.data.sampling import DEFAULT_SUBSET_SIZES, sample_to_dir
from sherlock.data.synthetic import IMAGE_SIZE, TIERS, generate_synthetic
from sherlock.demo import DemoConfig, run_demo
from sherlock.experiment import ExperimentConfig, run_experiment
from sherlock.models.loading import CheckpointNotFoundError
from sherlock.models.tiny import PRESETS, build_tiny_vlm, tokenizer_corpus
from sherlock.stages.config import ConfigError, add_config_arguments, config_from_args
from sherlock.stages.evaluate import EvaluationConfig, run_evaluation
from sherlock.stages.online import OnlineConfig, run_online
from sherlock.stages.preference_training import PreferenceTrainingConfig, run_train_preferences
from sherlock.stages.preferences import PreferenceDataConfig, run_build_preferences
from sherlock.stages.rejected import SampleRejectedConfig, run_sample_rejected
from sherlock.stages.sft import SFTStageConfig, run_sft

# command: (config class, stage function, help)
STAGES = {
    "sft": (SFTStageConfig, run_sft, "Stage I: vanilla SFT (R0), or Sherlock-SFT with --rejected"),
    "sample-rejected": (SampleRejectedConfig, run_sample_rejected, "Stage I: sample Y^l from R0 for D_B"),
    "build-preferences": (PreferenceDataConfig, run_build_preferences,
                          "Stage II data: truncation + visual perturbation pairs"),
    "train-preferences": (PreferenceTrainingConfig, run_train_preferences,
                          "Stage II/III: L_SC + α·L_DPO with dynamic β"),
    "online": (OnlineConfig, run_online, "Stage III: K label-free self-improvement iterations"),
    "evaluate": (EvaluationConfig, run_evaluation, "direct and self-correction accuracy per benchmark"),
}


def _sizes(text: str) -> dict[str, int]:
    try:
        return {name: int(size) for name, size in (part.split("=") for part in text.split(","))}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=SIZE[,NAME=SIZE…], got {text!r}") from None


def _synth(args) -> None:
    path = generate_synthetic(args.output, args.num_items, args.seed, tuple(args.tiers.split(",")), args.image_size)
    print(path)


def _sample(args) -> None:
    data = load_llava_cot(args.data, args.image_root, max_bad_fraction=args.max_bad_fraction)
    if data.num_quarantined:
        print(f"{data.num_quarantined} of {data.num_lines} lines quarantined: {data.quarantine_path}", file=sys.stderr)
    manifest = sample_to_dir(data, args.output, args.sizes, args.seed)
    print(json.dumps({name: len(entries) for name, entries in manifest["subsets"].items()}))


def _build_tiny(args) -> None:
    data = load_llava_cot(args.corpus, check_images=False)
    print(build_tiny_vlm(args.output, tokenizer_corpus(data.records), args.preset, args.image_size, args.vocab_size, args.seed))


def _dataclass_command(config_class, function):
    def run(args) -> None:
        fields = {f.name for f in dataclasses.fields(config_class)}
        result = function(config_class(**{k: v for k, v in vars(args).items() if k in fields}))
        if isinstance(result, str):
            print(result)

    return run


def _stage(config_class, function):
    def run(args) -> None:
        result = function(config_from_args(config_class, args))
        print(json.dumps(result, indent=2) if isinstance(result, dict) else result)

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sherlock", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    synth = commands.add_parser("synth", help="write the synthetic visual-reasoning data set")
    synth.add_argument("--output", type=Path, required=True)
    synth.add_argument("--num-items", type=int, default=10_000)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--tiers", default=",".join(TIERS), help="comma-separated subset of " + ",".join(TIERS))
    synth.add_argument("--image-size", type=int, default=IMAGE_SIZE)
    synth.set_defaults(func=_synth)

    sample = commands.add_parser("sample", help="draw disjoint seeded subsets (D_A, D_B) with a manifest")
    sample.add_argument("--data", type=Path, required=True, help="LLaVA-CoT style train.jsonl")
    sample.add_argument("--image-root", type=Path, default=None, help="default: the jsonl's folder")
    sample.add_argument("--output", type=Path, required=True)
    sample.add_argument("--sizes", type=_sizes, default=DEFAULT_SUBSET_SIZES, help="e.g. D_A=10000,D_B=10000")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--max-bad-fraction", type=float, default=DEFAULT_MAX_BAD_FRACTION)
    sample.set_defaults(func=_sample)

    tiny = commands.add_parser("build-tiny", help="build a tiny Llama-3.2-Vision checkpoint")
    tiny.add_argument("--output", type=Path, required=True)
    tiny.add_argument("--corpus", type=Path, required=True, help="jsonl whose texts train the tokenizer")
    tiny.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    tiny.add_argument("--image-size", type=int, default=IMAGE_SIZE)
    tiny.add_argument("--vocab-size", type=int, default=1024)
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=_build_tiny)

    for name, (config_class, function, help_text) in STAGES.items():
        stage = commands.add_parser(name, help=help_text, description=help_text)
        add_config_arguments(stage, config_class)
        stage.set_defaults(func=_stage(config_class, function))

    for name, config_class, function, help_text in (
        ("demo", DemoConfig, run_demo, "embedded end-to-end job: data, tiny model, SFT, accuracy before/after"),
        ("experiment", ExperimentConfig, run_experiment,
         "all stages and ablations on the synthetic task for several seeds (docs/results.md)"),
    ):
        command = commands.add_parser(name, help=help_text)
        for field in dataclasses.fields(config_class):
            command.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default), default=field.default)
        command.set_defaults(func=_dataclass_command(config_class, function))
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (DataQualityError, ConfigError, CheckpointNotFoundError, FileNotFoundError, ValueError) as error:
        sys.exit(f"sherlock {args.command}: error: {error}")


if __name__ == "__main__":
    main()
