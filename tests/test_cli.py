import json
import subprocess
import sys
from pathlib import Path

import pytest

from sherlock.cli import main


def test_synth_then_sample(tmp_path, capsys):
    main(["synth", "--output", str(tmp_path / "synth"), "--num-items", "30", "--seed", "2", "--tiers", "hard"])
    main(["sample", "--data", str(tmp_path / "synth/data.jsonl"), "--output", str(tmp_path / "subsets"),
          "--sizes", "D_A=10,D_B=12", "--seed", "1"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {"D_A": 10, "D_B": 12}
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
    assert "demo" in out.stdout and "sample" in out.stdout


def test_demo_runs_end_to_end(tmp_path, capsys):
    main(["demo", "--workdir", str(tmp_path), "--train-items", "48", "--eval-items", "12", "--epochs", "1",
          "--max-new-tokens", "16"])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["before"]["n"] == metrics["after"]["n"] == 12
    assert set(metrics["seconds"]) == {"data", "build", "eval_before", "sft", "eval_after"}
    printed = capsys.readouterr().out
    assert "before SFT" in printed and "after SFT" in printed
