"""Generation stages on 2 ranks (torchrun, gloo on CPU): the batches are shared out and merged back,
so the outputs are those of 1 rank, byte for byte; rank 0 alone writes."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def sherlock(*args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "sherlock.cli", *args], env=env, capture_output=True, text=True,
                            timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_two_ranks_sample_what_one_rank_samples(tiny_model_dir, subset_dir, tmp_path):
    """Sampled at T = 0.7: every item draws from its own stream, so its draw is the same on any rank.
    16 items in batches of 6: rank 0 takes two batches, rank 1 one."""
    from sherlock.data.llava_cot import load_llava_cot

    outputs = {}
    for ranks in (1, 2):
        output = tmp_path / f"ranks-{ranks}"
        result = sherlock("sample-rejected", "--model", str(tiny_model_dir), "--data", str(subset_dir), "--output",
                          str(output), "--max-new-tokens", "24", "--generation-batch-size", "6",
                          "--nproc-per-node", str(ranks))
        assert result.stdout.count("rejected.jsonl") == 1, "rank 0 alone reports"
        assert ("rank 1 of world size 2" in result.stderr) == (ranks == 2)
        outputs[ranks] = output
    rows = [json.loads(line) for line in (outputs[2] / "rejected.jsonl").read_text().splitlines()]
    assert [row["id"] for row in rows] == [r.id for r in load_llava_cot(subset_dir / "data.jsonl").records]
    assert len({row["rejected"] for row in rows}) > 1
    for name in ("rejected.jsonl", "stats.json"):
        assert (outputs[2] / name).read_bytes() == (outputs[1] / name).read_bytes(), name


def test_two_ranks_evaluate_as_one_rank(tiny_model_dir, subset_dir, tmp_path):
    """Greedy direct answers and correction rounds, the blank-image baseline: the same predictions and
    metrics on 2 ranks as on 1."""
    results = {}
    for ranks in (1, 2):
        output = tmp_path / f"ranks-{ranks}"
        sherlock("evaluate", "--model", str(tiny_model_dir), "--benchmarks", f"llava_cot={subset_dir}/data.jsonl",
                 "--output", str(output), "--temperature", "0", "--correction-rounds", "1", "--max-new-tokens", "24",
                 "--generation-batch-size", "5", "--nproc-per-node", str(ranks))
        results[ranks] = output
    predictions = [json.loads(line) for line in (results[2] / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 16 and all(len(p["responses"]) == 2 for p in predictions)
    for name in ("predictions.jsonl", "metrics.json"):
        assert (results[2] / name).read_bytes() == (results[1] / name).read_bytes(), name
