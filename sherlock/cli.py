"""``sherlock`` command line: data, tiny model, the training stages, evaluation and the embedded job.

Every stage command takes ``--config FILE.yaml`` and one ``--field-name VALUE`` flag per config
field; flags override the file, the file overrides the defaults.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from sherlock import distributed
from sherlock.stages.registry import STAGES

# The commands' modules (torch, transformers, TRL, MLflow, KServe: ~8 s) are imported where a command
# parses its arguments or runs, not here: `sherlock --help` imports none of them, and
# `sherlock <stage> --nproc-per-node N` starts its ranks first, and each rank imports them.


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _synth(args) -> None:
    from sherlock.data.synthetic import generate_synthetic

    path = generate_synthetic(args.output, args.num_items, args.seed, tuple(args.tiers.split(",")), args.image_size,
                              args.choice_fraction)
    print(path)


def _upload(args) -> None:
    from sherlock.storage import publish

    print(publish(args.local, args.uri, follow_symlinks=args.follow_symlinks))


def _make_buckets(args) -> None:
    from sherlock.storage import Storage

    storage = Storage()
    for bucket in args.buckets:
        print(f"{bucket}: {'created' if storage.ensure_bucket(bucket) else 'exists'}")


def _s3_identities(args) -> None:
    from sherlock.s3_identities import IdentityError, write_seaweed_config

    try:
        print(write_seaweed_config(args.policy, args.keys, args.output))
    except IdentityError as error:
        raise SystemExit(f"sherlock s3-identities: {error}") from None


def _download(args) -> None:
    from sherlock.storage import fetch

    print(fetch(args.uri))


def _serve(config) -> None:
    from sherlock.serving.server import ServeError, serve

    try:
        serve(config)
    except ServeError as error:
        sys.exit(f"sherlock serve: error: {error}")


def _build_tiny(args) -> None:
    from sherlock.data.llava_cot import load_llava_cot
    from sherlock.models.families import family
    from sherlock.models.tiny import tokenizer_corpus

    data = load_llava_cot(args.corpus, check_images=False)
    print(family(args.family).build(args.output, tokenizer_corpus(data.records), args.preset, args.image_size,
                                    args.vocab_size, args.seed))


def _imported(path: str):
    """The object ``module:name``, imported now."""
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def _config_command(config: str, function: str | Callable):
    """A command whose arguments are the fields of the config class ``config`` (``module:Class``); it prints
    what ``function(config)`` returns (``function`` a callable, or ``module:name`` imported when it runs).
    """
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        from sherlock.config import add_config_arguments

        add_config_arguments(parser, _imported(config))
        parser.set_defaults(func=run)

    def run(args) -> None:
        from sherlock.config import config_from_args

        run_function = _imported(function) if isinstance(function, str) else function
        result = run_function(config_from_args(_imported(config), args))
        if isinstance(result, str | dict):
            print(result if isinstance(result, str) else json.dumps(result, indent=2))

    return add_arguments


def _stage(name: str):
    """Arguments of stage ``name``: its config's fields, ``--pipeline-run-id`` and (multi-rank) ``--nproc-per-node``."""
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        from sherlock.config import add_config_arguments

        record = STAGES[name]
        add_config_arguments(parser, record.config)
        parser.add_argument("--pipeline-run-id", default=None,
                            help="nest the MLflow run under this pipeline run's parent run (MLFLOW_TRACKING_URI)")
        if record.multi_rank:
            parser.add_argument("--nproc-per-node", type=_positive, default=1,
                                help="run on this many local ranks with torchrun (one per GPU; gloo on CPU): "
                                     "generation shared out, data-parallel training, rank 0 writes")
        parser.set_defaults(func=run)

    def run(args) -> None:
        from sherlock.config import config_from_args
        from sherlock.stages.runner import run_stage

        result = run_stage(name, config_from_args(STAGES[name].config, args), args.pipeline_run_id)
        if distributed.is_main():
            print(json.dumps(result, indent=2) if isinstance(result, dict) else result)

    return add_arguments


def _synth_arguments(parser: argparse.ArgumentParser) -> None:
    from sherlock.data.synthetic import CHOICE_FRACTION, DIAGNOSTIC_TIERS, IMAGE_SIZE, TIERS

    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--num-items", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiers", default=",".join(TIERS), help="comma-separated subset of "
                        + ",".join(TIERS + DIAGNOSTIC_TIERS) + f" ({', '.join(DIAGNOSTIC_TIERS)}: diagnostic)")
    parser.add_argument("--image-size", type=int, default=IMAGE_SIZE)
    parser.add_argument("--choice-fraction", type=float, default=CHOICE_FRACTION,
                        help="share of the questions with options A-D asked as multiple choice "
                             "(the archived runs: 0.3)")
    parser.set_defaults(func=_synth)


def _upload_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("local", type=Path)
    parser.add_argument("uri")
    parser.add_argument("--follow-symlinks", action="store_true",
                        help="publish what symbolic links under LOCAL point to (refused without this flag)")
    parser.set_defaults(func=_upload)


def _make_buckets_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("buckets", nargs="+")
    parser.set_defaults(func=_make_buckets)


def _s3_identities_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", type=Path, required=True, help="identities.json: name, Secret and actions of each")
    parser.add_argument("--keys", type=Path, required=True,
                        help="directory holding each identity's Secret as KEYS/<name>/AWS_ACCESS_KEY_ID, …")
    parser.add_argument("--output", type=Path, required=True, help="SeaweedFS's identity file (-s3.config)")
    parser.set_defaults(func=_s3_identities)


def _download_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("uri")
    parser.set_defaults(func=_download)


def _build_tiny_arguments(parser: argparse.ArgumentParser) -> None:
    from sherlock.data.synthetic import IMAGE_SIZE
    from sherlock.models.families import FAMILIES
    from sherlock.models.tiny import PRESETS

    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--corpus", type=Path, required=True, help="jsonl whose texts train the tokenizer")
    parser.add_argument("--family", choices=sorted(FAMILIES), default="mllama")
    parser.add_argument("--preset", default="tiny", help=f"dimensions (mllama: {', '.join(sorted(PRESETS))}; "
                                                         "gemma3, idefics3: tiny)")
    parser.add_argument("--image-size", type=int, default=IMAGE_SIZE)
    parser.add_argument("--vocab-size", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=_build_tiny)


# The commands besides the stages: name -> (help, what adds its arguments)
UTILITIES: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {
    "synth": ("write the synthetic visual-reasoning data set", _synth_arguments),
    "upload": ("copy a directory to a local path or s3:// URI with its SHA256SUMS", _upload_arguments),
    "make-buckets": ("create S3 buckets that do not exist yet (idempotent)", _make_buckets_arguments),
    "s3-identities": ("write SeaweedFS's S3 identity file from the platform's policy and each identity's Secret",
                      _s3_identities_arguments),
    "download": ("fetch an s3:// directory or file (checked) into the cache", _download_arguments),
    "serve": ("serve a checkpoint with KServe (v1, v2, OpenAI chat completions)",
              _config_command("sherlock.serving.settings:ServeConfig", _serve)),
    "deploy": ("deploy a registered model as a KServe InferenceService (or write its manifest)",
               _config_command("sherlock.serving.deploy:DeployConfig", "sherlock.serving.deploy:run_deploy")),
    "build-tiny": ("build a tiny VLM checkpoint of one family (Llama-3.2-Vision, Gemma 3, Idefics3, Qwen2.5-VL, "
                   "Qwen3-VL) with a tokenizer trained on the corpus", _build_tiny_arguments),
    "rescore": ("score an evaluation's saved predictions again (the current answer extractor and grader; no model)",
                _config_command("sherlock.stages.evaluate:RescoreConfig", "sherlock.stages.evaluate:run_rescore")),
    "plan-memory": ("memory per GPU of a training step (DeepSpeed's estimators for model states), and what would fit",
                    _config_command("sherlock.training.memory:PlanMemoryConfig",
                                    "sherlock.training.memory:run_plan_memory")),
    "mlflow-access": ("as MLflow's admin: the pipeline's and the reader's users, the experiment, the models and "
                      "their grants", _config_command("sherlock.mlflow_access:AccessConfig",
                                                       "sherlock.mlflow_access:grant_access")),
}


class _CommandParser(argparse.ArgumentParser):
    """A command's parser that adds its arguments when it first parses: ``sherlock --help`` and the parser
    itself import none of the commands' modules (torch, transformers, TRL, MLflow, KServe).
    """

    def __init__(self, *args, add_arguments: Callable[[argparse.ArgumentParser], None] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._add_arguments = add_arguments

    def parse_known_args(self, args=None, namespace=None):
        if self._add_arguments is not None:
            add_arguments, self._add_arguments = self._add_arguments, None
            add_arguments(self)
        return super().parse_known_args(args, namespace)


def build_parser() -> argparse.ArgumentParser:
    """The ``sherlock`` parser; a command adds its arguments only when it parses (no torch import)."""
    parser = argparse.ArgumentParser(prog="sherlock", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_CommandParser)
    for name, (help_text, add_arguments) in UTILITIES.items():
        commands.add_parser(name, help=help_text, description=help_text, add_arguments=add_arguments)
    for stage in STAGES.values():
        commands.add_parser(stage.name, help=stage.help, description=stage.help, add_arguments=_stage(stage.name))
    return parser


def _requested_ranks(argv: list[str]) -> int:
    """The ``--nproc-per-node`` of a multi-rank stage command in ``argv`` (1 otherwise, or when malformed:
    the full parser then reports it).
    """
    if not argv or argv[0] not in STAGES or not STAGES[argv[0]].multi_rank:
        return 1
    peek = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    peek.add_argument("--nproc-per-node", type=_positive, default=1)
    try:
        return peek.parse_known_args(argv[1:])[0].nproc_per_node
    except argparse.ArgumentError:
        return 1


def main(argv: list[str] | None = None) -> None:
    """Run ``sherlock`` with ``argv``: on N ranks under torchrun when ``--nproc-per-node`` asks."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ranks = _requested_ranks(argv)
    if ranks > 1 and "RANK" not in os.environ:  # start the ranks, each reruns argv (and parses and checks it)
        try:
            distributed.launch(ranks, "sherlock.cli", argv)
        except distributed.RankFailed as error:
            sys.exit(f"sherlock {argv[0]}: error: {error}")
        return
    args = build_parser().parse_args(argv)  # imports the command's modules: its errors' classes are loaded
    from sherlock.serving.deploy import DeployError
    from sherlock.storage import StorageError

    try:
        args.func(args)
        distributed.shutdown()
    except (ValueError, FileNotFoundError, StorageError, DeployError) as error:  # bad input (ConfigError,
        # DataQualityError are ValueErrors; CheckpointNotFoundError a FileNotFoundError), unreachable storage
        if "RANK" in os.environ:
            raise
        sys.exit(f"sherlock {args.command}: error: {error}")


if __name__ == "__main__":  # torchrun's ranks run this module: a rank's exception goes to its error file
    from torch.distributed.elastic.multiprocessing.errors import record

    record(main)()
