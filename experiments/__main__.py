"""``python -m experiments [--workdir DIR] [--seeds 0,1,2] [--recipes …]``: the harness from the command
line, one flag per field of :class:`experiments.harness.ExperimentConfig` (``--config FILE.yaml`` too)."""

from __future__ import annotations

import argparse
import sys

from sherlock.config import ConfigError, add_config_arguments, config_from_args


def build_parser() -> argparse.ArgumentParser:
    from experiments.harness import ExperimentConfig

    parser = argparse.ArgumentParser(prog="python -m experiments", description=__doc__.splitlines()[0])
    add_config_arguments(parser, ExperimentConfig)
    return parser


def main(argv: list[str] | None = None) -> None:
    from experiments.harness import ExperimentConfig, run_experiment

    args = build_parser().parse_args(argv)
    try:
        print(run_experiment(config_from_args(ExperimentConfig, args)))
    except (ConfigError, ValueError, FileNotFoundError) as error:
        sys.exit(f"python -m experiments: error: {error}")


if __name__ == "__main__":
    main()
