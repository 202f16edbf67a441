"""Evaluation: direct accuracy and accuracy after each greedy self-correction round (spec §1).

Round 0 answers the question (greedy by default; the paper samples with T = 0.6, top_p = 0.7).
Round k prompts with R(Q, response of round k−1) and decodes greedily; every round is scored.
With ``describe_first`` (STIC's describe-and-respond, spec §3 DaR) the model first describes the
image (greedy) and Q is the question prefixed with that description.
Outputs: ``metrics.json``, ``results.md`` (a table per round), ``accuracy_by_round.png`` and
``predictions.jsonl`` (every response, for auditing or an external judge).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from sherlock.benchmarks import BENCHMARKS, load_benchmark, paper_average, score_responses  # noqa: E402
from sherlock.generation import DecodingConfig, answer_with_corrections, generate  # noqa: E402
from sherlock.models.loading import load_vlm  # noqa: E402
from sherlock.prompts import STIC_DAR_PROMPT, stic_description_infused  # noqa: E402
from sherlock.stages.config import ConfigError, SamplingSettings, help_field, parse_named  # noqa: E402
from sherlock.data.schema import write_jsonl  # noqa: E402
from sherlock.stages.io import record_stage_config  # noqa: E402

METRICS_FILE, TABLE_FILE, PLOT_FILE, PREDICTIONS_FILE = (
    "metrics.json", "results.md", "accuracy_by_round.png", "predictions.jsonl")


@dataclass(kw_only=True)
class EvaluationConfig(SamplingSettings):
    model: str = help_field(help="checkpoint to evaluate", uri="model")
    benchmarks: str = help_field(help="comma-separated NAME=PATH, NAME in llava_cot," + ",".join(BENCHMARKS),
                                  uri="named_data")
    output: str = help_field(help="directory for metrics.json, results.md and the plot", uri="output")
    correction_rounds: int = help_field(3, "greedy self-correction rounds after the direct answer")
    temperature: float = help_field(0.0, "direct-answer temperature (0: greedy; paper 0.6)")
    limit: int | None = help_field(None, "evaluate only the first N items of each benchmark")
    describe_first: bool = help_field(False, "describe the image first and prefix the question with it (STIC DaR)")
    seed: int = help_field(0, "sampling seed of the direct answers")

    def parsed_benchmarks(self) -> dict[str, str]:
        return parse_named(self.benchmarks, "benchmarks")

    def check(self) -> None:
        if self.correction_rounds < 0:
            raise ConfigError("correction_rounds must be >= 0")
        unknown = set(self.parsed_benchmarks()) - set(BENCHMARKS) - {"llava_cot"}
        if unknown:
            raise ConfigError(f"unknown benchmark(s) {sorted(unknown)}; known: llava_cot, {', '.join(BENCHMARKS)}")


def markdown_table(metrics: dict) -> str:
    rounds = max(len(m["rounds"]) for m in metrics["benchmarks"].values())
    header = "| benchmark | n | direct | " + " | ".join(f"+SC round {k}" for k in range(1, rounds)) + " |"
    lines = [header, "|" + "---|" * (rounds + 2)]

    def cell(result):
        if result["score"] is None:
            return "judge needed"
        stderr = result.get("stderr")
        return f"{result['score']:.1f}" + (f" ± {stderr:.1f}" if stderr is not None else "")

    for name, m in metrics["benchmarks"].items():
        lines.append(f"| {name} | {m['rounds'][0]['n']} | " + " | ".join(cell(r) for r in m["rounds"]) + " |")
    if metrics.get("paper_average") is not None:
        lines.append("| paper average (MME/28) | | " + " | ".join(f"{v:.1f}" for v in metrics["paper_average"]) + " |")
    notes = [f"- {name}: {BENCHMARKS[name].note}" for name in metrics["benchmarks"] if name in BENCHMARKS
             and BENCHMARKS[name].note]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def plot_rounds(metrics: dict, path: Path) -> None:
    figure, axes = plt.subplots(figsize=(5, 3.5))
    for name, m in metrics["benchmarks"].items():
        scores = [r["score"] for r in m["rounds"]]
        if None not in scores:
            axes.plot(range(len(scores)), scores, marker="o", label=name)
    axes.set_xlabel("self-correction round (0 = direct)")
    axes.set_ylabel("score")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def run_evaluation(config: EvaluationConfig) -> dict:
    """Evaluate ``config.model`` on every benchmark; writes the outputs and returns the metrics."""
    config.check()
    model, processor = load_vlm(config.model, dtype=torch.float32)
    direct = config.decoding(config.seed)
    output = Path(config.output)
    metrics: dict = {"model": config.model, "benchmarks": {}}
    predictions = []
    for name, path in config.parsed_benchmarks().items():
        items = load_benchmark(name, path, config.limit)
        images = [i.image for i in items]
        questions = [i.prompt for i in items]
        if config.describe_first:
            greedy = DecodingConfig(config.max_new_tokens, batch_size=config.generation_batch_size)
            descriptions = generate(model, processor, [STIC_DAR_PROMPT] * len(items), images, config=greedy,
                                    desc=f"{name} descriptions")
            questions = [stic_description_infused(q, d) for q, d in zip(questions, descriptions)]
        rounds = answer_with_corrections(model, processor, questions, images, config.correction_rounds, direct,
                                         desc=name)
        metrics["benchmarks"][name] = {"path": path, "rounds": [score_responses(name, items, r) for r in rounds]}
        predictions += [{"benchmark": name, "id": item.id, "answer": item.answer, "prompt": questions[j],
                         "responses": [r[j] for r in rounds]} for j, item in enumerate(items)]
    per_round = [{name: m["rounds"][k]["score"] for name, m in metrics["benchmarks"].items()}
                 for k in range(config.correction_rounds + 1)]
    averages = [paper_average(scores) for scores in per_round]
    metrics["paper_average"] = None if None in averages else averages
    output.mkdir(parents=True, exist_ok=True)
    record_stage_config(config, output)
    (output / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    (output / TABLE_FILE).write_text(markdown_table(metrics))
    write_jsonl(predictions, output / PREDICTIONS_FILE)
    plot_rounds(metrics, output / PLOT_FILE)
    return metrics
