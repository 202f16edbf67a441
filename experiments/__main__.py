"""``python -m experiments [--workdir DIR] [--seeds 0,1,2] [--recipes …]``: the harness from the command
line, one flag per field of :class:`experiments.harness.ExperimentConfig` (``--config FILE.yaml`` too)."""

from __future__ import annotations

import argparse
import sys

from sherlock.config import ConfigError, add_config_arguments, config_from_args


def build_parser(config_type=None, prog: str = "python -m experiments", doc: str = __doc__) -> argparse.ArgumentParser:
    """One flag per field of ``config_type`` (default the harness's :class:`ExperimentConfig`)."""
    if config_type is None:
        from experiments.harness import ExperimentConfig as config_type
    parser = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0])
    add_config_arguments(parser, config_type)
    return parser


def run_command(config_type, run, prog: str, doc: str, argv: list[str] | None) -> None:
    """Parse ``argv`` into ``config_type``, print ``run(config)``; a bad setting exits with its reason."""
    args = build_parser(config_type, prog, doc).parse_args(argv)
    try:
        print(run(config_from_args(config_type, args)))
    except (ConfigError, ValueError, FileNotFoundError) as error:
        sys.exit(f"{prog}: error: {error}")


def main(argv: list[str] | None = None) -> None:
    from experiments.harness import ExperimentConfig, run_experiment

    run_command(ExperimentConfig, run_experiment, "python -m experiments", __doc__, argv)


if __name__ == "__main__":
    main()
