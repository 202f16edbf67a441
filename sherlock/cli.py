"""``sherlock`` command line: data, tiny model, the training stages, evaluation and the embedded job.

Every stage command takes ``--config FILE.yaml`` and one ``--field-name VALUE`` flag per config
field; flags override the file, the file overrides the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from sherlock import distributed
from sherlock.stages.registry import STAGES

# The commands' modules (torch, transformers, TRL, MLflow, KServe: ~8 s) are imported where a command
# runs, not here: `sherlock <stage> --nproc-per-node N` starts its ranks first, and each rank imports them.


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _synth(args) -> None:
    from sherlock.data.synthetic import generate_synthetic

    path = generate_synthetic(args.output, args.num_items, args.seed, tuple(args.tiers.split(",")), args.image_size)
    print(path)


def _upload(args) -> None:
    from sherlock.storage import publish

    print(publish(args.local, args.uri))


def _make_buckets(args) -> None:
    from sherlock.storage import Storage

    storage = Storage()
    for bucket in args.buckets:
        print(f"{bucket}: {'created' if storage.ensure_bucket(bucket) else 'exists'}")


def _download(args) -> None:
    from sherlock.storage import fetch

    print(fetch(args.uri))


def _serve(args) -> None:
    from sherlock.config import config_from_args
    from sherlock.serving.server import ServeError, serve
    from sherlock.serving.settings import ServeConfig

    try:
        serve(config_from_args(ServeConfig, args))
    except ServeError as error:
        sys.exit(f"sherlock serve: error: {error}")


def _deploy(args) -> None:
    from sherlock.config import config_from_args
    from sherlock.serving.deploy import DeployConfig, run_deploy

    print(json.dumps(run_deploy(config_from_args(DeployConfig, args)), indent=2))


def _build_tiny(args) -> None:
    from sherlock.data.llava_cot import load_llava_cot
    from sherlock.models.families import family
    from sherlock.models.tiny import tokenizer_corpus

    data = load_llava_cot(args.corpus, check_images=False)
    print(family(args.family).build(args.output, tokenizer_corpus(data.records), args.preset, args.image_size,
                                    args.vocab_size, args.seed))


def _dataclass_command(config_class, function):
    def run(args) -> None:
        from sherlock.config import config_from_args

        result = function(config_from_args(config_class, args))
        if isinstance(result, str | dict):
            print(result if isinstance(result, str) else json.dumps(result, indent=2))

    return run


def _stage(command, config_class):
    def run(args) -> None:
        from sherlock.config import config_from_args
        from sherlock.stages.runner import run_stage

        result = run_stage(command, config_from_args(config_class, args), args.pipeline_run_id)
        if distributed.is_main():
            print(json.dumps(result, indent=2) if isinstance(result, dict) else result)

    return run


def build_parser() -> argparse.ArgumentParser:
    from sherlock.config import add_config_arguments
    from sherlock.data.synthetic import IMAGE_SIZE, TIERS
    from sherlock.demo import DemoConfig, run_demo
    from sherlock.experiment import ExperimentConfig, run_experiment
    from sherlock.mlflow_access import AccessConfig, grant_access
    from sherlock.models.families import FAMILIES
    from sherlock.models.tiny import PRESETS
    from sherlock.serving.deploy import DeployConfig
    from sherlock.serving.settings import ServeConfig
    from sherlock.stages.evaluate import RescoreConfig, run_rescore
    from sherlock.training.memory import PlanMemoryConfig, run_plan_memory

    parser = argparse.ArgumentParser(prog="sherlock", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    synth = commands.add_parser("synth", help="write the synthetic visual-reasoning data set")
    synth.add_argument("--output", type=Path, required=True)
    synth.add_argument("--num-items", type=int, default=10_000)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--tiers", default=",".join(TIERS), help="comma-separated subset of " + ",".join(TIERS))
    synth.add_argument("--image-size", type=int, default=IMAGE_SIZE)
    synth.set_defaults(func=_synth)

    upload = commands.add_parser("upload", help="copy a directory to a local path or s3:// URI with its SHA256SUMS")
    upload.add_argument("local", type=Path)
    upload.add_argument("uri")
    upload.set_defaults(func=_upload)

    buckets = commands.add_parser("make-buckets", help="create S3 buckets that do not exist yet (idempotent)")
    buckets.add_argument("buckets", nargs="+")
    buckets.set_defaults(func=_make_buckets)

    download = commands.add_parser("download", help="fetch an s3:// directory or file (checked) into the cache")
    download.add_argument("uri")
    download.set_defaults(func=_download)

    serve = commands.add_parser("serve", help="serve a checkpoint with KServe (v1, v2, OpenAI chat completions)")
    add_config_arguments(serve, ServeConfig)
    serve.set_defaults(func=_serve)

    deploy = commands.add_parser("deploy", help="deploy a registered model as a KServe InferenceService "
                                                "(or write its manifest)")
    add_config_arguments(deploy, DeployConfig)
    deploy.set_defaults(func=_deploy)

    tiny = commands.add_parser("build-tiny", help="build a tiny VLM checkpoint of one family (Llama-3.2-Vision, "
                                                  "Gemma 3, Idefics3) with a tokenizer trained on the corpus")
    tiny.add_argument("--output", type=Path, required=True)
    tiny.add_argument("--corpus", type=Path, required=True, help="jsonl whose texts train the tokenizer")
    tiny.add_argument("--family", choices=sorted(FAMILIES), default="mllama")
    tiny.add_argument("--preset", default="tiny", help=f"dimensions (mllama: {', '.join(sorted(PRESETS))}; "
                                                       "gemma3, idefics3: tiny)")
    tiny.add_argument("--image-size", type=int, default=IMAGE_SIZE)
    tiny.add_argument("--vocab-size", type=int, default=1024)
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=_build_tiny)

    for stage in STAGES.values():
        command = commands.add_parser(stage.name, help=stage.help, description=stage.help)
        add_config_arguments(command, stage.config)
        command.add_argument("--pipeline-run-id", default=None,
                             help="nest the MLflow run under this pipeline run's parent run (MLFLOW_TRACKING_URI)")
        if stage.multi_rank:
            command.add_argument("--nproc-per-node", type=_positive, default=1,
                                 help="run on this many local ranks with torchrun (one per GPU; gloo on CPU): "
                                      "generation shared out, data-parallel training, rank 0 writes")
        command.set_defaults(func=_stage(stage.name, stage.config))

    for name, config_class, function, help_text in (
        ("demo", DemoConfig, run_demo, "embedded end-to-end job: data, tiny model, SFT, accuracy before/after"),
        ("experiment", ExperimentConfig, run_experiment,
         "all stages and ablations on the synthetic task for several seeds (docs/results.md)"),
        ("rescore", RescoreConfig, run_rescore,
         "score an evaluation's saved predictions again (the current answer extractor and grader; no model)"),
        ("plan-memory", PlanMemoryConfig, run_plan_memory,
         "memory per GPU of a training step (DeepSpeed's estimators for model states), and what would fit"),
        ("mlflow-access", AccessConfig, grant_access,
         "as MLflow's admin: the pipeline's and the reader's users, the experiment, the models and their grants"),
    ):
        command = commands.add_parser(name, help=help_text)
        add_config_arguments(command, config_class)
        command.set_defaults(func=_dataclass_command(config_class, function))
    return parser


def _requested_ranks(argv: list[str]) -> int:
    """The ``--nproc-per-node`` of a multi-rank stage command in ``argv`` (1 otherwise, or when malformed:
    the full parser then reports it)."""
    if not argv or argv[0] not in STAGES or not STAGES[argv[0]].multi_rank:
        return 1
    peek = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    peek.add_argument("--nproc-per-node", type=_positive, default=1)
    try:
        return peek.parse_known_args(argv[1:])[0].nproc_per_node
    except argparse.ArgumentError:
        return 1


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    ranks = _requested_ranks(argv)
    if ranks > 1 and "RANK" not in os.environ:  # start the ranks, each reruns argv (and parses and checks it)
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

        try:
            distributed.launch(ranks, "sherlock.cli", argv)
        except ChildFailedError as error:
            rank, failure = error.get_first_failure()
            reason = failure.message.get("message") if isinstance(failure.message, dict) else failure.message
            if failure.exitcode > 0 and not os.path.isfile(failure.error_file):  # exited before an error was recorded
                reason = "see its output above (e.g. the command's usage error)"
            sys.exit(f"sherlock {argv[0]}: error: rank {rank} failed (exit code {failure.exitcode}): {reason}")
        return
    from sherlock.config import ConfigError
    from sherlock.data.llava_cot import DataQualityError
    from sherlock.models.loading import CheckpointNotFoundError
    from sherlock.serving.deploy import DeployError
    from sherlock.storage import StorageError

    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (DataQualityError, ConfigError, CheckpointNotFoundError, FileNotFoundError, StorageError, DeployError,
            ValueError) as error:
        if "RANK" in os.environ:
            raise
        sys.exit(f"sherlock {args.command}: error: {error}")


if __name__ == "__main__":  # torchrun's ranks run this module: a rank's exception goes to its error file
    from torch.distributed.elastic.multiprocessing.errors import record

    record(main)()
