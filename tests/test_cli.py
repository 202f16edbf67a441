import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sherlock.cli import main
from sherlock.stages.registry import STAGES


def test_synth_then_sample(tmp_path, capsys):
    main(["synth", "--output", str(tmp_path / "synth"), "--num-items", "30", "--seed", "2", "--tiers", "hard"])
    main(["sample", "--data", str(tmp_path / "synth/data.jsonl"), "--output", str(tmp_path / "subsets"),
          "--sizes", "D_A=10,D_B=12", "--seed", "1"])
    synth_path, printed = capsys.readouterr().out.split("\n", 1)
    assert json.loads(printed) == {"D_A": 10, "D_B": 12}
    manifest = json.loads((tmp_path / "subsets/manifest.json").read_text())
    assert manifest["seed"] == 1 and len(manifest["subsets"]["D_B"]) == 12
    assert manifest["source"] == str(tmp_path / "synth/data.jsonl")


def test_bad_input_exits_with_a_message(tmp_path):
    bad = tmp_path / "train.jsonl"
    bad.write_text("{broken\n")
    with pytest.raises(SystemExit, match=r"sherlock sample: error: 1 of 1 lines .* invalid"):
        main(["sample", "--data", str(bad), "--output", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="need 5 records"):
        main(["synth", "--output", str(tmp_path / "s"), "--num-items", "3"])
        main(["sample", "--data", str(tmp_path / "s/data.jsonl"), "--output", str(tmp_path / "o"), "--sizes", "D_A=5"])


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "sherlock"
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True)
    assert "build-tiny" in out.stdout and "sample" in out.stdout


STAGE_COMMANDS = ("sft", "sample-rejected", "build-preferences", "train-preferences", "online", "evaluate")


@pytest.mark.parametrize("command", STAGE_COMMANDS)
def test_every_stage_has_a_command_with_config_flags(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--config" in out and "--model" in out and "--output" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["sft", "--data", "d", "--output", "o"], "needs model"),
        (["sft", "--model", "/no/such/model", "--data", "d", "--output", "o"], "no model checkpoint"),
        (["train-preferences", "--model", "m", "--data", "d", "--output", "o", "--use-sc", "false",
          "--use-dpo", "false"], "loss would be empty"),
        (["evaluate", "--model", "m", "--output", "o", "--benchmarks", "mmbench"], "NAME=PATH"),
        (["online", "--model", "m", "--data", "d", "--output", "o", "--num-pairs", "0"], "num_pairs"),
        (["build-preferences", "--model", "m", "--data", "d", "--output", "o", "--scheme", "code"], "scheme"),
    ],
)
def test_stage_commands_reject_bad_input(argv, message, tmp_path):
    with pytest.raises(SystemExit, match=message):
        main(argv)


def test_stage_command_reads_a_yaml_config(tiny_model_dir, subset_dir, tmp_path, capsys):
    config = tmp_path / "sample.yaml"
    config.write_text(f"model: {tiny_model_dir}\ndata: {subset_dir}\noutput: {tmp_path / 'out'}\nmax_new_tokens: 4\n")
    main(["sample-rejected", "--config", str(config), "--seed", "3"])
    assert capsys.readouterr().out.strip().endswith("rejected.jsonl")
    assert "seed: 3" in (tmp_path / "out/stage_config.yaml").read_text()
    assert len((tmp_path / "out/rejected.jsonl").read_text().splitlines()) == 16


def test_experiment_and_compile_flags_are_parsed_like_the_stages():
    """One config mechanism: ``--flag false`` is False (``type=bool`` would make it True), bad values fail."""
    from experiments.__main__ import build_parser as experiment_parser
    from experiments.harness import ExperimentConfig
    from pipelines.common import ClusterOptions
    from sherlock.config import ConfigError, add_config_arguments, config_from_args

    args = experiment_parser().parse_args(["--static-beta-ablation", "false", "--sft-epochs", "2"])
    config = config_from_args(ExperimentConfig, args)
    assert config.static_beta_ablation is False and config.sft_epochs == 2.0 and config.seeds == "0,1,2"
    with pytest.raises(ConfigError, match="static_beta_ablation must be true or false"):
        config_from_args(ExperimentConfig, experiment_parser().parse_args(["--static-beta-ablation", "no!"]))
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, ClusterOptions)
    options = config_from_args(ClusterOptions, parser.parse_args(["--node-selector", "pool=gpu,zone=a",
                                                                  "--checkpoint-pvc", "ckpt"]))
    assert options.selector() == {"pool": "gpu", "zone": "a"} and options.checkpoint_pvc == "ckpt"


HEAVY = "('torch', 'transformers', 'trl', 'mlflow', 'kserve', 'datasets')"


@pytest.mark.parametrize("code", ["import sherlock.cli", "import sherlock.cli as c; c.build_parser()",
                                  "import contextlib, sherlock.cli as c\n"
                                  "with contextlib.suppress(SystemExit): c.main(['--help'])"])
def test_the_launcher_the_parser_and_help_import_none_of_the_commands_modules(code):
    """``sherlock <stage> --nproc-per-node N`` launches from a light module (each rank imports the rest), and
    neither the parser nor ``sherlock --help`` imports a command's module: a command's parser adds its
    arguments when it parses."""
    loaded = subprocess.run([sys.executable, "-c", f"{code}\nimport sys\n"
                             f"print(sorted(m for m in {HEAVY} if m in sys.modules), file=sys.stderr)"],
                            capture_output=True, text=True, check=True)
    assert loaded.stderr.strip().splitlines()[-1] == "[]"


def test_every_commands_help_imports_none_of_the_heavy_libraries():
    """``sherlock <command> --help`` reads the command's config class: the stage modules import torch,
    transformers and TRL where a stage runs, not at import (4–5 s before, 0.2 s now). ``build-tiny`` is the
    exception: its ``--family`` choices come from the family registry, which imports the model classes."""
    from sherlock.cli import UTILITIES

    commands = [*STAGES, *(name for name in UTILITIES if name != "build-tiny")]
    code = ("import contextlib, sys, sherlock.cli as c\n"
            f"for command in {commands!r}:\n"
            "    with contextlib.suppress(SystemExit): c.main([command, '--help'])\n"
            f"print(sorted(m for m in {HEAVY} if m in sys.modules), file=sys.stderr)")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert loaded.stderr.strip().splitlines()[-1] == "[]"
    assert loaded.stdout.count("usage: sherlock") == len(commands)


def test_a_failed_rank_fails_the_command_with_its_error(tmp_path):
    script = Path(sys.executable).parent / "sherlock"
    failed = subprocess.run([str(script), "sample-rejected", "--nproc-per-node", "2", "--model", str(tmp_path),
                             "--data", str(tmp_path / "missing"), "--output", str(tmp_path / "out")],
                            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert failed.returncode == 1
    assert re.search(r"sherlock sample-rejected: error: rank [01] failed \(exit code 1\): FileNotFoundError: "
                     r"no data set at .*missing", failed.stderr)
    assert not (tmp_path / "out").exists()
