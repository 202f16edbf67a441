"""Verifiers: whether a response stands or should be corrected, for the verifier-gated round
(:func:`sherlock.headroom.verifier_gated`).

A verifier is ``verify(question, response, options) -> bool`` (True: it accepts the response, and the
correction chain stops there). Built in: ``consistency``, a rule-based check of the embedded task's
4-stage responses (:mod:`sherlock.data.synthetic`) that needs no model — the REASONING's facts against the
model's own CAPTION, its counts and sums against its own listings, the CONCLUSION against the REASONING's
last claim. It rejects a response without the four stages or a readable conclusion, and accepts one whose
claims it cannot read (a real benchmark's free prose): it only ever catches an inconsistency it can see.
Others come from installed packages under the entry-point group :data:`VERIFIERS` (a model judge, a
process reward model); a setting chooses among names, never a module.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from sherlock.answers import extract_answer, normalise_text
from sherlock.reasoning import ReasoningFormatError, parse_stages

VERIFIERS = "sherlock.verifiers"  # entry-point group: verify(question, response, options) -> bool
Verifier = Callable[[str, str, Mapping[str, str]], bool]

CELL = r"(?:top|middle|bottom) (?:left|middle|right)|center"
SHAPE = r"(?:(?P<size>small|large) )?(?P<colour>[a-z]+) (?P<kind>circle|square|triangle)"
CAPTION_ENTRY = re.compile(rf"(?P<cell>{CELL}): an? {SHAPE}")
CAPTION_COUNT = re.compile(r"shows (\d+) shapes?")
AT_CELL = re.compile(rf"the {SHAPE} (?:is )?at (?P<cell>{CELL})", re.IGNORECASE)
CELL_HOLDS = re.compile(rf"(?:At (?P<cell>{CELL}) there is|it is (?P<cell2>{CELL}), where there is) an? {SHAPE}",
                        re.IGNORECASE)
LISTING = re.compile(r"are: (?P<listed>[^:]*?)(?:, so|\. That makes) (?P<count>\d+)")
ARITHMETIC = re.compile(r"(\d+) ([+-]) (\d+) = (\d+)")
OPTION_CLAIM = re.compile(r"The answer (?P<value>[a-z0-9]+) is option (?P<letter>[A-D])")
FINAL_CLAIM = re.compile(r"(?:That makes|=|So the shape is an?|So the colour is|So the answer is) (?P<value>[a-z0-9]+)")


def caption_shapes(caption: str) -> dict[str, tuple[str | None, str, str]] | None:
    """``{cell: (size, colour, kind)}`` of a caption in the embedded task's form, or None when it lists
    none (a caption this check cannot read).
    """
    entries = {m["cell"]: (m["size"], m["colour"], m["kind"]) for m in CAPTION_ENTRY.finditer(caption)}
    return entries or None


def inconsistencies(question: str, response: str, options: Mapping[str, str]) -> list[str]:
    """What the rule-based check finds wrong in ``response`` (empty: consistent as far as it can read)."""
    try:
        steps = parse_stages(response)
    except ReasoningFormatError as error:
        return [str(error)]
    if not steps.conclusion.strip():
        return ["the conclusion is empty"]
    found = []
    shapes = caption_shapes(steps.caption)
    if shapes is not None:
        count = CAPTION_COUNT.search(steps.caption)
        if count and int(count.group(1)) != len(shapes):
            found.append(f"the caption says {count.group(1)} shapes and lists {len(shapes)}")
        for match in [*AT_CELL.finditer(steps.reasoning), *CELL_HOLDS.finditer(steps.reasoning)]:
            cell = (match["cell"] if "cell2" not in match.groupdict() else match["cell"] or match["cell2"]).lower()
            seen = shapes.get(cell)
            claimed = (match["size"], match["colour"].lower(), match["kind"].lower())
            if seen is None or seen[1:] != claimed[1:] or (claimed[0] and seen[0] and claimed[0] != seen[0]):
                found.append(f"the reasoning puts a {' '.join(filter(None, claimed))} at {cell}; the caption "
                             f"{'has ' + ' '.join(filter(None, seen)) if seen else 'has nothing'} there")
    for match in LISTING.finditer(steps.reasoning):
        listed = match["listed"].strip()
        size = 0 if listed == "none" else len(AT_CELL.findall(listed))
        if size and size != int(match["count"]) or listed == "none" and int(match["count"]) != 0:
            found.append(f"a listing of {size} is counted as {match['count']}")
    for a, sign, b, result in ARITHMETIC.findall(steps.reasoning):
        if (int(a) + int(b) if sign == "+" else int(a) - int(b)) != int(result):
            found.append(f"{a} {sign} {b} is not {result}")
    conclusion = normalise_text(steps.conclusion)
    option = OPTION_CLAIM.search(steps.reasoning)
    if option:
        if options and normalise_text(options.get(option["letter"], "")) != option["value"].lower():
            found.append(f"option {option['letter']} is not {option['value']}")
        if extract_answer(steps.conclusion, "choice", options) != option["letter"]:
            found.append(f"the reasoning chooses {option['letter']}, the conclusion {steps.conclusion.strip()!r}")
    else:
        claims = FINAL_CLAIM.findall(steps.reasoning)
        if claims and claims[-1].lower() != conclusion:
            found.append(f"the reasoning ends at {claims[-1]}, the conclusion says {steps.conclusion.strip()!r}")
    return found


def consistency(question: str, response: str, options: Mapping[str, str]) -> bool:
    """Accept ``response`` unless :func:`inconsistencies` finds something."""
    return not inconsistencies(question, response, options)


def load_verifier(name: str) -> Verifier:
    """``consistency`` or a verifier registered under :data:`VERIFIERS` by an installed package."""
    from sherlock.config import registered

    return registered(VERIFIERS, name, {"consistency": consistency}, "verifier")
