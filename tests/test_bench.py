"""The benchmarks' quick mode: every benchmark runs against its baseline and reports a ratio.

It checks that the benchmarks work (and that P1/P2's implementations agree), not the numbers:
those come from the full mode, recorded in docs/benchmarks.md. P4's quick mode is the reduced
pipeline run of tests/pipelines/test_pipeline.py.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_quick_mode_reports_every_benchmark(tmp_path):
    output = tmp_path / "results.json"
    result = subprocess.run([sys.executable, "-m", "bench", "--quick", "--only", "P1,P2,P3,P5,P6,P7,P8,serving,P10",
                             "--workdir", str(tmp_path), "--output", str(output)],
                            cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(output.read_text())
    names = [r["name"] for r in report["results"]]
    assert [name.split()[0] for name in names] == ["P1"] * 11 + ["P2", "P3", "P5", "P6", "P7", "P8", "P8", "Serving",
                                                                 "Serving", "P10"]
    assert [r["details"]["family"] for r in report["results"][:11]] == ["mllama"] * 3 + [
        family for family in ("gemma3", "idefics3", "qwen2_5_vl", "qwen3_vl") for _ in range(2)]
    assert all("peak memory" in names[i] for i in (1, 4, 6, 8, 10))
    assert "activation checkpointing" in names[2] and report["results"][2]["details"]["memory_ratio"] > 0
    for entry in report["results"]:
        assert entry["project"] > 0 and entry["baseline"] > 0 and entry["target"] > 0, entry
        lower_is_better = "lower is better" in entry["metric"]
        assert entry["ratio"] == pytest.approx(entry["baseline"] / entry["project"] if lower_is_better
                                               else entry["project"] / entry["baseline"])
        assert f"{entry['name']:<28}" in result.stdout
    by_name = {r["name"].split()[0]: r for r in report["results"]}
    assert all(r["details"]["max_loss_difference"] <= 1e-5 for r in report["results"][:11])
    assert by_name["P2"]["details"]["max_loss_difference"] <= 1e-4
    assert report["machine"]["quick"] is True


def test_unknown_benchmark_is_refused():
    result = subprocess.run([sys.executable, "-m", "bench", "--only", "P99"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and "unknown benchmarks ['P99']" in result.stderr
