"""What self-correction rounds do, beside what the same compute could buy another way.

A correction round gains only where the model can tell a wrong answer from a right one; otherwise it is a
re-draw. These numbers tell the two apart, per benchmark, on the items' own scores (1/0, or a grader's
0–1 grade; "right" is a score of at least 0.5), as per-item means in % (not a benchmark's official
aggregation):

- ``flips``: per round r ≥ 1 against round r − 1, the items fixed (wrong → right), broken (right →
  wrong), kept right and kept wrong;
- ``oracle_gated``: the accuracy per round when a correction counts only where the answer before it was
  wrong (a perfect verifier). Along one correction chain this is "any round up to r right": the chain a
  gate stops once right is the same chain until then;
- ``verifier_gated``: the accuracy per round when a verifier (:mod:`sherlock.verifiers`) decides where the
  chain stops: round r's answer counts only where the verifier rejected every answer before it; with
  ``verifier`` its rejection rates on right and on wrong direct answers (a verifier worth gating on
  rejects far more wrong than right ones);
- ``slices``: the direct and last-round accuracy and the last round's flips per answer format and per
  item family (a benchmark's category: the embedded task's tier);
- ``samples``: from k sampled direct answers (k = 1 + rounds by default: the rounds' compute),
  ``pass_at_1`` (the mean over the samples), ``pass_at_k`` (any sample right) and ``majority_at_k``
  (the most frequent readable answer, ties to the earliest).

SC − direct can exceed 0 only where the rounds find something a re-draw would not: compare it with
majority_at_k − pass_at_1 (what voting over the same number of draws buys) and with oracle_gated
(what a verifier would allow).
"""

from __future__ import annotations

from collections import Counter

RIGHT = 0.5  # a score at least this counts as right in the flip counts


def flip_counts(hits: list[list[float]]) -> list[dict[str, int]]:
    """Per correction round (``hits[r]`` against ``hits[r - 1]``): fixed, broken, kept right, kept wrong."""
    flips = []
    for before, after in zip(hits, hits[1:]):
        pairs = Counter((b >= RIGHT, a >= RIGHT) for b, a in zip(before, after, strict=True))
        flips.append({"fixed": pairs[False, True], "broken": pairs[True, False],
                      "kept_right": pairs[True, True], "kept_wrong": pairs[False, False]})
    return flips


def oracle_gated(hits: list[list[float]]) -> list[float]:
    """Accuracy (%) per round when each correction is kept only where the answer before it was wrong: the
    best score of rounds 0..r per item.
    """
    best = list(hits[0])
    accuracies = [100 * sum(best) / len(best)]
    for scores in hits[1:]:
        best = [max(b, s) for b, s in zip(best, scores, strict=True)]
        accuracies.append(100 * sum(best) / len(best))
    return accuracies


def verifier_gated(hits: list[list[float]], accepted: list[list[bool]]) -> list[float]:
    """Accuracy (%) per round when the chain of item i stops at its first response the verifier accepts:
    ``accepted[r][i]`` for the responses of rounds 0..R−1 (the last round is never asked).
    """
    if len(accepted) != len(hits) - 1:
        raise ValueError(f"need the verifier's decision on rounds 0..{len(hits) - 2}, got {len(accepted)} rounds")
    current, going = list(hits[0]), [True] * len(hits[0])
    accuracies = [100 * sum(current) / len(current)]
    for decisions, scores in zip(accepted, hits[1:], strict=True):
        going = [g and not a for g, a in zip(going, decisions, strict=True)]
        current = [s if g else c for g, s, c in zip(going, scores, current, strict=True)]
        accuracies.append(100 * sum(current) / len(current))
    return accuracies


def rejection_rates(hits: list[float], accepted: list[bool]) -> dict[str, float | None]:
    """How often (%) a verifier rejects right and wrong answers (None where there are none)."""
    right = [not a for h, a in zip(hits, accepted, strict=True) if h >= RIGHT]
    wrong = [not a for h, a in zip(hits, accepted, strict=True) if h < RIGHT]
    return {"rejects_right": 100 * sum(right) / len(right) if right else None,
            "rejects_wrong": 100 * sum(wrong) / len(wrong) if wrong else None}


def slices(labels: dict[str, list[str]], hits: list[list[float]]) -> dict[str, dict[str, dict]]:
    """Per grouping (e.g. ``format``) and label (``number``): n, the direct and last-round accuracy (%) and
    the last round's flips, from ``labels[grouping][i]`` of each item.
    """
    result: dict[str, dict[str, dict]] = {}
    for grouping, item_labels in labels.items():
        for label in sorted(set(item_labels)):
            members = [i for i, value in enumerate(item_labels) if value == label]
            rows = [[scores[i] for i in members] for scores in hits]
            result.setdefault(grouping, {})[label] = {
                "n": len(members), "direct": 100 * sum(rows[0]) / len(members),
                "last": 100 * sum(rows[-1]) / len(members),
                **({"flips": flip_counts([rows[-2], rows[-1]])[0]} if len(rows) > 1 else {})}
    return result


def sample_headroom(scores: list[list[float]], answers: list[list[str | None]]) -> dict[str, float | int]:
    """pass@1, pass@k and majority@k (%) from ``scores[i][j]`` and the readable answer ``answers[i][j]``
    (None: unreadable) of sample j of item i; every item has the same k samples.
    """
    k = len(scores[0])
    if any(len(s) != k or len(a) != k for s, a in zip(scores, answers, strict=True)):
        raise ValueError("every item needs the same number of samples, with an answer (or None) each")
    majority = []
    for item_scores, item_answers in zip(scores, answers, strict=True):
        counts = Counter(a for a in item_answers if a is not None)
        if not counts:
            majority.append(item_scores[0])
            continue
        top = max(counts.values())
        chosen = next(j for j, a in enumerate(item_answers) if a is not None and counts[a] == top)
        majority.append(item_scores[chosen])
    n = len(scores)
    return {"k": k, "pass_at_1": 100 * sum(sum(s) / k for s in scores) / n,
            "pass_at_k": 100 * sum(max(s) for s in scores) / n, "majority_at_k": 100 * sum(majority) / n}

