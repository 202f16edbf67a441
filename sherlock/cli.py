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

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, record

from sherlock import distributed
from sherlock.config import ConfigError, add_config_arguments, config_from_args
from sherlock.data.llava_cot import DataQualityError, load_llava_cot
from sherlock.data.synthetic import IMAGE_SIZE, TIERS, generate_synthetic
from sherlock.demo import DemoConfig, run_demo
from sherlock.experiment import ExperimentConfig, run_experiment
from sherlock.mlflow_access import AccessConfig, grant_access
from sherlock.models.families import FAMILIES, family
from sherlock.models.loading import CheckpointNotFoundError
from sherlock.models.tiny import PRESETS, tokenizer_corpus
from sherlock.serving.deploy import DeployConfig, DeployError, run_deploy
from sherlock.serving.settings import ServeConfig
from sherlock.stages.evaluate import RescoreConfig, run_rescore
from sherlock.stages.registry import STAGES
from sherlock.stages.runner import run_stage
from sherlock.storage import Storage, StorageError, fetch, publish
from sherlock.training.memory import PlanMemoryConfig, run_plan_memory


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _synth(args) -> None:
    path = generate_synthetic(args.output, args.num_items, args.seed, tuple(args.tiers.split(",")), args.image_size)
    print(path)


def _upload(args) -> None:
    print(publish(args.local, args.uri))


def _make_buckets(args) -> None:
    storage = Storage()
    for bucket in args.buckets:
        print(f"{bucket}: {'created' if storage.ensure_bucket(bucket) else 'exists'}")


def _download(args) -> None:
    print(fetch(args.uri))


def _serve(args) -> None:
    from sherlock.serving.server import ServeError, serve

    try:
        serve(config_from_args(ServeConfig, args))
    except ServeError as error:
        sys.exit(f"sherlock serve: error: {error}")


def _deploy(args) -> None:
    print(json.dumps(run_deploy(config_from_args(DeployConfig, args)), indent=2))


def _build_tiny(args) -> None:
    data = load_llava_cot(args.corpus, check_images=False)
    print(family(args.family).build(args.output, tokenizer_corpus(data.records), args.preset, args.image_size,
                                    args.vocab_size, args.seed))


def _dataclass_command(config_class, function):
    def run(args) -> None:
        result = function(config_from_args(config_class, args))
        if isinstance(result, str | dict):
            print(result if isinstance(result, str) else json.dumps(result, indent=2))

    return run


def _stage(command, config_class):
    def run(args) -> None:
        config = config_from_args(config_class, args)
        if getattr(args, "nproc_per_node", 1) > 1 and "RANK" not in os.environ:  # start the ranks, each reruns argv
            distributed.launch(args.nproc_per_node, "sherlock.cli", args.argv)
            return
        result = run_stage(command, config, args.pipeline_run_id)
        if distributed.is_main():
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


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args.func(args)
    except ChildFailedError as error:
        rank, failure = error.get_first_failure()
        reason = failure.message.get("message") if isinstance(failure.message, dict) else failure.message
        sys.exit(f"sherlock {args.command}: error: rank {rank} failed (exit code {failure.exitcode}): {reason}")
    except (DataQualityError, ConfigError, CheckpointNotFoundError, FileNotFoundError, StorageError, DeployError,
            ValueError) as error:
        if "RANK" in os.environ:
            raise
        sys.exit(f"sherlock {args.command}: error: {error}")


if __name__ == "__main__":  # torchrun's ranks run this module: a rank's exception goes to its error file
    record(main)()
