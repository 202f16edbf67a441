"""Evaluation: direct accuracy, accuracy after each greedy self-correction round, and the baselines.

The default is the paper's protocol (spec §1): the direct answer is sampled (T = 0.6,
top_p = 0.7), round k prompts with R(Q, response of round k−1) and decodes greedily; every round
is scored. Beside it, per benchmark: the greedy direct answer, the direct answer given a blank
white image, the blind prior of the training data (``prior_data``; no model, no image), SC − direct
on the same items (paired bootstrap 95 % CI, McNemar), and for data with gold 4-stage responses
the perception checks and where wrong answers depart from the gold (:mod:`sherlock.diagnostics`).
With ``describe_first`` (STIC's describe-and-respond, spec §3 DaR) the model first describes the
image (greedy) and Q is the question prefixed with that description.
Outputs: ``metrics.json``, ``results.md``, ``accuracy_by_round.png`` and ``predictions.jsonl``
(every response, for auditing or an external judge), rewritten as each benchmark finishes; a
benchmark that fails is recorded under ``errors`` and the others still run and report (the stage
then fails, naming it). Quarantined benchmark rows: ``quarantine/<benchmark>.jsonl``.
``sherlock rescore`` scores saved predictions again (:func:`run_rescore`) after the answer extractor
or the grader changed, without a model.
"""

from __future__ import annotations

import dataclasses
import json
import traceback
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from sherlock import distributed
from sherlock.benchmarks import (
    BENCHMARKS,
    BenchmarkItem,
    Grader,
    item_score,
    load_benchmark,
    load_grader,
    mmvet_keyword_grade,
    paper_average,
    read_answer,
    score_items,
    score_responses,
)
from sherlock.chat import chat_prompt
from sherlock.config import ConfigError, help_field, parse_named
from sherlock.data.llava_cot import DEFAULT_MAX_BAD_FRACTION, BadLine, load_data, read_checked_jsonl
from sherlock.data.schema import write_jsonl
from sherlock.decoding import DecodingConfig, SamplingSettings
from sherlock.diagnostics import BlindPrior, departure_histogram, paired_difference, perception_scores
from sherlock.headroom import flip_counts, oracle_gated, rejection_rates, sample_headroom, slices, verifier_gated
from sherlock.octopus import FORMATS
from sherlock.prompts import CORRECTIONS, STIC_DAR_PROMPT, WAIT_CUE, stic_description_infused
from sherlock.protocol import Protocol, read_protocol
from sherlock.stages.io import record_stage_config
from sherlock.stages.registry import STAGES
from sherlock.verifiers import load_verifier

PAPER_TEMPERATURE, PAPER_TOP_P = 0.6, 0.7  # the direct answer of the official evaluation code

METRICS_FILE, TABLE_FILE, PLOT_FILE, PREDICTIONS_FILE = (
    STAGES["evaluate"].outputs[name] for name in ("metrics", "table", "plot", "predictions"))


@dataclass(kw_only=True)
class VerifierSetting:
    """Which verifier decides in the verifier-gated round (evaluate, diagnose, rescore)."""

    verifier: str | None = help_field("consistency", "who decides in the verifier-gated round whether an answer "
                                                     "is corrected: 'consistency' (rule-based, the embedded task's "
                                                     "4-stage responses) or one registered under the entry-point "
                                                     "group sherlock.verifiers; '': no such round")

    def check_verifier(self) -> None:
        """Refuse a verifier nobody registered."""
        if self.verifier:
            load_verifier(self.verifier)


@dataclass(kw_only=True)
class ProtocolSettings(SamplingSettings, VerifierSetting):
    """How answers are drawn and which baselines are scored beside them (evaluate and diagnose)."""

    correction_rounds: int = help_field(3, "greedy self-correction rounds after the direct answer")
    correction: str | None = help_field(None, f"how a round asks for a correction {CORRECTIONS}: a new turn R(Q, "
                                                "previous response) (Sherlock, SCL), or the question with Octopus's "
                                                "trigger instruction, round k continuing the response after an "
                                                "appended <self-correction></self-correction> (Octopus); default: as "
                                                "the checkpoint was trained (its self_correction.json)")
    response_format: str | None = help_field(None, f"the attempts' format under correction 'continue' "
                                                   f"{tuple(FORMATS)}; default: the checkpoint's")
    temperature: float = help_field(PAPER_TEMPERATURE, "direct-answer temperature (0: greedy; paper 0.6)")
    top_p: float = help_field(PAPER_TOP_P, "direct-answer nucleus threshold (paper 0.7)")
    greedy_direct: bool = help_field(True, "also score a greedy direct answer (a second column)")
    blank_image: bool = help_field(True, "also score the direct answer given a blank white image")
    wait_baseline: bool = help_field(True, "also score the direct answer continued greedily after 'Wait,' (arXiv "
                                           "2507.02778): the cheapest self-correction, one round's compute")
    prior_data: str | None = help_field(None, "labelled training data: score its blind prior on each benchmark",
                                        uri="data")
    seed: int = help_field(0, "sampling seed of the direct answers")
    headroom_samples: int | None = help_field(None, "k sampled direct answers for pass@k and majority@k "
                                                    "(sherlock.headroom; default 1 + correction_rounds: the "
                                                    "rounds' compute; 1: none)")

    def check_protocol(self) -> None:
        """Refuse bad protocol settings (rounds, samples) with a :class:`ConfigError`."""
        if self.correction_rounds < 0:
            raise ConfigError("correction_rounds must be >= 0")
        if self.correction not in (None, *CORRECTIONS) or self.response_format not in (None, *FORMATS):
            raise ConfigError(f"correction must be one of {CORRECTIONS} and response_format one of "
                              f"{tuple(FORMATS)}; got {self.correction!r}, {self.response_format!r}")
        if self.headroom_samples is not None and self.headroom_samples < 1:
            raise ConfigError(f"headroom_samples must be >= 1, got {self.headroom_samples}")
        self.check_verifier()

    def protocol(self, model: str) -> Protocol:
        """How ``model``'s rounds ask: its declared :mod:`sherlock.protocol` (Sherlock's without one), with
        :attr:`correction` and :attr:`response_format` in its place where set.
        """
        declared = read_protocol(model)
        return Protocol(self.correction or declared.correction, self.response_format or declared.response_format)

    def samples(self) -> int:
        """K of pass@k and majority@k: :attr:`headroom_samples`, or 1 + the correction rounds."""
        return self.headroom_samples if self.headroom_samples is not None else 1 + self.correction_rounds


@dataclass(kw_only=True)
class BenchmarkFiles:
    """Which benchmark files are scored, what becomes of their bad rows and how open answers are graded
    (evaluate and rescore).
    """

    benchmarks: str = help_field(help="comma-separated NAME=PATH, NAME in llava_cot," + ",".join(BENCHMARKS),
                                  uri="named_data")
    output: str = help_field(help="directory for metrics.json, results.md, predictions.jsonl and the plot",
                             uri="output")
    limit: int | None = help_field(None, "evaluate only the first N items of each benchmark")
    max_bad_fraction: float = help_field(DEFAULT_MAX_BAD_FRACTION, "refuse a benchmark file when more of its rows "
                                                                   "than this are quarantined")
    grader: str = help_field("keyword", "MM-Vet's grader: 'keyword' (its <AND>/<OR> answers affirmed in the "
                                        "CONCLUSION) or a model judge registered under the entry-point group "
                                        "sherlock.graders")

    def parsed_benchmarks(self) -> dict[str, str]:
        """The benchmarks as ``{name: file}``."""
        return parse_named(self.benchmarks, "benchmarks")

    def check_benchmarks(self) -> None:
        """Refuse a benchmark name the evaluator does not know."""
        unknown = set(self.parsed_benchmarks()) - set(BENCHMARKS) - {"llava_cot"}
        if unknown:
            raise ConfigError(f"unknown benchmark(s) {sorted(unknown)}; known: llava_cot, {', '.join(BENCHMARKS)}")
        load_grader(self.grader)

    def load(self, name: str, path: str) -> list[BenchmarkItem]:
        """The benchmark's items; its bad rows go to ``<output>/quarantine/<name>.jsonl``."""
        return load_benchmark(name, path, self.limit, Path(self.output) / "quarantine" / f"{name}.jsonl",
                              self.max_bad_fraction)


@dataclass(kw_only=True)
class EvaluateConfig(ProtocolSettings, BenchmarkFiles):
    """Config of ``sherlock evaluate``."""
    model: str = help_field(help="checkpoint to evaluate", uri="model")
    describe_first: bool = help_field(False, "describe the image first and prefix the question with it (STIC DaR)")

    def check(self) -> None:
        """Refuse bad settings before a model is loaded."""
        self.check_protocol()
        self.check_benchmarks()


def _score(result: dict | None) -> str:
    if result is None:
        return "–"
    stderr = result.get("stderr")
    return f"{result['score']:.1f}" + (f" ± {stderr:.1f}" if stderr is not None else "")


def summary_rows(metrics: dict) -> tuple[list[str], list[list[str]]]:
    """Header and one row per benchmark: every round (± stderr), SC − direct with its paired 95 % CI, what
    the same compute buys otherwise (:mod:`sherlock.headroom`: the oracle- and verifier-gated last round, pass@1,
    majority@k and pass@k of k sampled direct answers, per-item means, the "Wait" continuation) and the
    baselines (greedy direct, blank image, blind prior).
    """
    rounds = max(len(m["rounds"]) for m in metrics["benchmarks"].values())
    header = (["benchmark", "n", "direct"] + [f"+SC round {k}" for k in range(1, rounds)]
              + ["SC − direct [95% CI]", "oracle-gated SC", "verifier-gated SC", "pass@1", "maj@k", "pass@k",
                 "Wait", "greedy direct",
                 "blank image", "blind prior"])
    rows = []
    for name, m in metrics["benchmarks"].items():
        paired, samples = m.get("sc_minus_direct"), m.get("samples") or {}
        rows.append([name, str(m["rounds"][0]["n"])] + [_score(r) for r in m["rounds"]] + [
            f"{paired['difference']:+.1f} [{paired['ci_low']:+.1f}, {paired['ci_high']:+.1f}]" if paired else "–",
            f"{m['oracle_gated'][-1]:.1f}" if m.get("oracle_gated") else "–",
            f"{m['verifier_gated'][-1]:.1f}" if m.get("verifier_gated") else "–",
            *(f"{samples[key]:.1f}" if key in samples else "–" for key in ("pass_at_1", "majority_at_k", "pass_at_k")),
            _score(m.get("wait")), _score(m.get("greedy_direct")), _score(m.get("blank_image")),
            f"{m['blind_prior']:.1f}" if m.get("blind_prior") is not None else "–"])
    return header, rows


def markdown_table(metrics: dict) -> str:
    """:func:`summary_rows` as Markdown, with the paper average and the perception notes."""
    header, rows = summary_rows(metrics)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    if metrics.get("paper_average") is not None:
        missing = metrics.get("paper_average_missing")
        label = f"mean of the paper's benchmarks here (MME/28; missing: {', '.join(missing)})" if missing else \
            "paper average (MME/28)"
        lines.append(f"| {label} | | " + " | ".join(f"{v:.1f}" for v in metrics["paper_average"]) + " |")
    lines += [f"| {name} | failed: {error} |" for name, error in metrics.get("errors", {}).items()]
    notes = [f"- {name}: {BENCHMARKS[name].note}" for name in metrics["benchmarks"] if name in BENCHMARKS
             and BENCHMARKS[name].note]
    if metrics.get("self_correction"):
        notes.append("- rounds asked as correction '{correction}', attempts in '{response_format}'".format(
            **metrics["self_correction"]))
    for name, m in metrics["benchmarks"].items():
        if "perception" in m:
            notes.append(f"- {name} perception (direct answers): " + ", ".join(
                f"{key} {100 * value:.1f}%" for key, value in m["perception"].items()))
            notes.append(f"- {name} wrong direct answers depart from the gold at: " + ", ".join(
                f"{stage} {count}" for stage, count in m["departure"].items()))
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def wait_answers(protocol: Protocol, direct: list[str], continued: list[str]) -> list[str]:
    """The "Wait" baseline's responses (arXiv 2507.02778): each continuation after the cue where it gives a final
    answer in the checkpoint's format (:meth:`Protocol.answer`), else the direct answer it continued.
    """
    return [c if protocol.answer(c) is not None else d for d, c in zip(direct, continued, strict=True)]


def blank_images(images: list[list[Image.Image]]) -> list[list[Image.Image]]:
    """A white image of each image's size (every image of each question)."""
    return [[Image.new("RGB", image.size, (255, 255, 255)) for image in question] for question in images]


def evaluate_benchmark(model, processor, name: str, items: list[BenchmarkItem], config: ProtocolSettings,
                       protocol: Protocol, prior: BlindPrior | None, questions: list[str] | None = None,
                       grader: Grader = mmvet_keyword_grade) -> tuple[dict, list[list[str]], list[list[float]]]:
    """Metrics of one benchmark (see the module docstring), the responses of every round, asked as ``protocol``
    says, and their per-item scores (1/0 by the rules; the grader's 0–1 grade for open-ended answers).
    """
    from sherlock.generation import answer_continuing, answer_with_corrections, generate, trigger_prompts

    images, keys = [i.images for i in items], [i.id for i in items]
    questions = questions or [i.prompt for i in items]
    contexts = [i.context for i in items]
    direct = config.decoding(config.seed)
    if protocol.correction == "continue":  # every direct answer is asked as the rounds' first attempt is
        prompts = trigger_prompts(questions, protocol.response_format, contexts)
        rounds = answer_continuing(model, processor, prompts, images, config.correction_rounds, direct, desc=name,
                                   keys=keys)
    else:
        prompts = [chat_prompt(q, c) for q, c in zip(questions, contexts, strict=True)]
        rounds = answer_with_corrections(model, processor, questions, images, config.correction_rounds, direct,
                                         desc=name, keys=keys, contexts=contexts)
    hits = [[item_score(item, response, grader) for item, response in zip(items, responses, strict=True)]
            for responses in rounds]
    result: dict = {"rounds": [score_items(name, items, h) for h in hits]}
    result |= correction_headroom(items, rounds, hits, config.verifier, config.seed)
    if config.samples() > 1:  # round 0 is the first sample; the others from their own streams
        samples = [rounds[0]] + [generate(model, processor, prompts, images, config=direct,
                                          desc=f"{name} direct sample {j + 1}", stream=f"direct sample {j}", keys=keys)
                                 for j in range(1, config.samples())]
        scores = [[hits[0][i]] + [item_score(item, s[i], grader) for s in samples[1:]] for i, item in enumerate(items)]
        answers = [[read_answer(item, s[i]) for s in samples] for i, item in enumerate(items)]
        result["samples"] = sample_headroom(scores, answers)
    greedy = dataclasses.replace(direct, temperature=0.0, top_p=1.0)
    if config.greedy_direct:
        result["greedy_direct"] = score_responses(name, items, generate(
            model, processor, prompts, images, config=greedy, desc=f"{name} greedy direct"), grader)
    if config.wait_baseline:  # the direct answer continued; where the continuation concludes nothing, it stands
        continued = generate(model, processor, prompts, images, prefixes=[f"{r}\n\n{WAIT_CUE}" for r in rounds[0]],
                             config=greedy, desc=f"{name} wait", stream="wait", keys=keys)
        result["wait"] = score_responses(name, items, wait_answers(protocol, rounds[0], continued), grader)
    if config.blank_image:  # the direct answer's random stream: only the image differs from round 0
        result["blank_image"] = score_responses(name, items, generate(
            model, processor, prompts, blank_images(images), config=direct, desc=f"{name} blank image",
            stream="direct", keys=keys), grader)
    if prior is not None:
        result["blind_prior"] = 100 * prior.accuracy([i.prompt for i in items], [i.answer for i in items])
    if all(i.reference for i in items):
        references = [i.reference for i in items]
        result["perception"] = perception_scores(rounds[0], references)
        wrong = [k for k, hit in enumerate(hits[0]) if not hit]
        result["departure"] = departure_histogram([rounds[0][k] for k in wrong], [references[k] for k in wrong])
    return result, rounds, hits


def correction_headroom(items: list[BenchmarkItem], rounds: list[list[str]], hits: list[list[float]],
                        verifier: str | None, seed: int) -> dict:
    """What the correction rounds did (:mod:`sherlock.headroom`): SC − direct with its paired CI, the flips,
    the oracle- and verifier-gated accuracies and the slices by format and family (with no round: the slices).
    """
    result: dict = {"slices": slices({"format": [i.answer_type for i in items],
                                      "family": [i.category or "none" for i in items]}, hits)}
    if len(hits) < 2:
        return result
    result["sc_minus_direct"] = paired_difference(hits[-1], hits[0], seed=seed)
    result["flips"], result["oracle_gated"] = flip_counts(hits), oracle_gated(hits)
    if verifier:
        verify = load_verifier(verifier)
        accepted = [[bool(verify(item.prompt, response, item.options)) for item, response in
                     zip(items, responses, strict=True)] for responses in rounds[:-1]]
        result["verifier_gated"] = verifier_gated(hits, accepted)
        result["verifier"] = {"name": verifier} | rejection_rates(hits[0], accepted[0])
    return result


class EvaluationError(RuntimeError):
    """A benchmark failed; the others' results are written."""


def run_evaluate(config: EvaluateConfig) -> dict:
    """Evaluate ``config.model`` on every benchmark; writes the outputs as each one finishes and returns
    the metrics. A benchmark that fails is recorded in ``metrics["errors"]``; the others still run, and
    :class:`EvaluationError` names the failed ones at the end.
    """
    from sherlock.generation import generate
    from sherlock.models.engines import load_generator

    config.check()
    grader = load_grader(config.grader)
    model, processor = load_generator(config.model, config.engine, distributed.device(), config.image_budget())
    prior = BlindPrior(load_data(config.prior_data).records) if config.prior_data else None
    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    record_stage_config(config, output)
    protocol = config.protocol(config.model)
    metrics: dict = {"model": config.model, "self_correction": dataclasses.asdict(protocol), "benchmarks": {}}
    predictions = []
    for name, path in config.parsed_benchmarks().items():
        try:
            items = config.load(name, path)
            questions = [i.prompt for i in items]
            if config.describe_first:
                greedy = DecodingConfig(config.max_new_tokens, batch_size=config.generation_batch_size)
                descriptions = generate(model, processor, [STIC_DAR_PROMPT] * len(items), [i.images for i in items],
                                        config=greedy, desc=f"{name} descriptions")
                questions = [stic_description_infused(q, d) for q, d in zip(questions, descriptions)]
            result, rounds, hits = evaluate_benchmark(model, processor, name, items, config, protocol, prior, questions,
                                                      grader)
            if BENCHMARKS.get(name) and BENCHMARKS[name].metric == "graded":
                result["grader"] = config.grader
        except Exception as error:  # one benchmark's failure must not lose the others
            metrics.setdefault("errors", {})[name] = f"{type(error).__name__}: {error}"
            traceback.print_exc()
            continue
        metrics["benchmarks"][name] = {"path": path} | result
        predictions += [{"benchmark": name, "id": item.id, "answer": item.answer, "prompt": questions[j],
                         "responses": [r[j] for r in rounds], "correct": [h[j] for h in hits]}
                        for j, item in enumerate(items)]
        write_outputs(metrics, predictions, output, config.correction_rounds)
    if metrics.get("errors"):
        if metrics["benchmarks"]:
            write_outputs(metrics, predictions, output, config.correction_rounds)
        elif distributed.is_main():
            (output / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
        raise EvaluationError(f"{len(metrics['errors'])} benchmark(s) failed: {metrics['errors']}; the others' "
                              f"results are in {output}")
    return metrics


def write_outputs(metrics: dict, predictions: list[dict], output: Path, correction_rounds: int) -> None:
    """The metrics (with the paper average over the benchmarks so far), table, predictions and plot
    (written by rank 0).
    """
    from sherlock.plots import plot_rounds

    per_round = [{name: m["rounds"][k]["score"] for name, m in metrics["benchmarks"].items()}
                 for k in range(correction_rounds + 1)]
    averages = [paper_average(scores) for scores in per_round]
    metrics["paper_average"] = None if any(value is None for value, _ in averages) else [v for v, _ in averages]
    if metrics["paper_average"] is not None:
        metrics["paper_average_missing"] = averages[0][1]
    if not distributed.is_main():
        return
    (output / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    (output / TABLE_FILE).write_text(markdown_table(metrics))
    write_jsonl(predictions, output / PREDICTIONS_FILE)
    plot_rounds(metrics, output / PLOT_FILE)


@dataclass(kw_only=True)
class RescoreConfig(BenchmarkFiles, VerifierSetting):
    """Config of ``sherlock rescore``: score saved predictions again."""
    predictions: str = help_field(help="predictions.jsonl written by `sherlock evaluate` on these benchmark files")
    seed: int = help_field(0, "seed of the paired bootstrap of SC − direct")


def saved_predictions(path: Path, quarantine: Path) -> dict[str, dict[str, dict]]:
    """The rows of a ``predictions.jsonl`` by benchmark and id; any malformed line (not an object, a
    field of the wrong type, rounds of unequal length, a repeated id) refuses the file, naming the
    line in ``quarantine``.
    """
    rows: dict[str, dict[str, dict]] = {}

    def row_of(row: object) -> list[dict]:
        if not isinstance(row, dict):
            raise BadLine("line is not a JSON object")
        if not (isinstance(row.get("benchmark"), str) and isinstance(row.get("id"), str)):
            raise BadLine("benchmark and id must be strings")
        responses, correct = row.get("responses"), row.get("correct")
        if not (isinstance(responses, list) and responses and all(isinstance(r, str) for r in responses)):
            raise BadLine("responses must be a non-empty list of strings")
        if not (isinstance(correct, list) and len(correct) == len(responses)
                and all(isinstance(c, bool | int | float) for c in correct)):
            raise BadLine("correct must hold one score per response")
        if row["id"] in rows.setdefault(row["benchmark"], {}):
            raise BadLine(f"{row['benchmark']} item {row['id']!r} appears twice")
        rows[row["benchmark"]][row["id"]] = row
        return [row]

    read_checked_jsonl(path, row_of, quarantine, 0.0, "predictions")
    return rows


def matched_items(items: list[BenchmarkItem], rows: dict[str, dict], name: str) -> list[tuple[BenchmarkItem, dict]]:
    """Each saved row with its item, in the benchmark's order. A row matches the item of its id, or the
    one item whose id without its source prefix is the row's (predictions written before LLaVA-CoT ids
    were namespaced by source); a row without an item is an error.
    """
    by_id = {item.id: item for item in items}
    bare: dict[str, list[BenchmarkItem]] = {}
    for item in items:
        bare.setdefault(item.id.split("/", 1)[-1], []).append(item)
    pairs = {}
    for key, row in rows.items():
        item = by_id.get(key) or (bare[key][0] if len(bare.get(key, [])) == 1 else None)
        if item is None:
            raise ValueError(f"saved prediction {key!r} of {name} is not an item of its benchmark file")
        pairs[item.id] = (item, row)
    return [pairs[item.id] for item in items if item.id in pairs]


def run_rescore(config: RescoreConfig) -> dict:
    """Score saved predictions again with the current answer extractor and grader: no model, the
    benchmark files they were made on. Writes the evaluate outputs (each row's ``correct`` re-scored,
    ``correct_before`` kept) and, per benchmark and round, how many scores moved up and down.
    """
    config.check_benchmarks()
    config.check_verifier()
    grader = load_grader(config.grader)
    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    saved = saved_predictions(Path(config.predictions), output / "quarantine" / "predictions.jsonl")
    unknown = set(saved) - set(config.parsed_benchmarks())
    if unknown:
        raise ConfigError(f"{config.predictions} holds predictions of {sorted(unknown)}: name their files too")
    metrics: dict = {"rescored": config.predictions, "benchmarks": {}}
    predictions, num_rounds = [], set()
    for name, path in config.parsed_benchmarks().items():
        if name not in saved:
            raise ConfigError(f"{config.predictions} holds no predictions of {name}")
        matched = matched_items(config.load(name, path), saved[name], name)
        num_rounds |= {len(row["responses"]) for _, row in matched}
        if len(num_rounds) > 1:
            raise ValueError(f"{config.predictions}: the rows hold different numbers of rounds {sorted(num_rounds)}")
        items = [item for item, _ in matched]
        hits = [[item_score(item, row["responses"][k], grader) for item, row in matched]
                for k in range(len(matched[0][1]["responses"]))]
        before = [[float(row["correct"][k]) for _, row in matched] for k in range(len(hits))]
        result = {"path": path, "rounds": [score_items(name, items, h) for h in hits],
                  "moved": [{"up": sum(n > o for n, o in zip(now, old)), "down": sum(n < o for n, o in zip(now, old))}
                            for now, old in zip(hits, before)]}
        result |= correction_headroom(items, [[row["responses"][k] for _, row in matched] for k in range(len(hits))],
                                      hits, config.verifier, config.seed)
        metrics["benchmarks"][name] = result
        predictions += [row | {"id": item.id, "correct": [h[j] for h in hits], "correct_before": row["correct"]}
                        for j, (item, row) in enumerate(matched)]
        for k, (scores, moved) in enumerate(zip(result["rounds"], result["moved"])):
            old = score_items(name, items, before[k])["score"]
            print(f"{name} round {k}: {old:.1f} -> {scores['score']:.1f} ({moved['up']} up, {moved['down']} down)")
    write_outputs(metrics, predictions, output, num_rounds.pop() - 1)
    return metrics
