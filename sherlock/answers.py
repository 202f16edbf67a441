"""The one answer extractor: a response's (or CONCLUSION's) answer as an option letter, a number,
yes/no or normalised text, and the rule-based comparisons built on it.

Evaluation (:mod:`sherlock.benchmarks`), Y^l typing (:mod:`sherlock.stages.sample_rejected`), SCL's
correctness typing and the online self-consistency filter all read answers here. The choice rules
follow VLMEvalKit's ``can_infer`` (an option letter standing alone, else exactly one option's text)
with what small models write besides: ``b``, ``**B**``, ``[B]``, ``(B)``, ``B. 12``, "the answer is
B" (an explicit phrase beats a leading article: "A cat …, so the answer is B" is B), letters only up
to the number of options, and "A"/"I" read as a letter only when no lower-case word follows them
("A large tree" is no letter). Numbers keep the Unicode minus and thousands written ``1,000`` or
``1 000``; yes/no takes an explicit "answer is", else a leading yes/no, else the last one.
Anything that cannot be read returns None, so an unreadable answer is wrong, never matched.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Mapping

from sherlock.reasoning import conclusion_text

ANSWER_TYPES = ("choice", "number", "yesno", "text")
LETTERS = "ABCDEFGHI"  # MMMU has up to nine options
NUMBER_WORDS = {word: str(n) for n, word in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}

_DASHES = str.maketrans({"\u2212": "-", "\u2012": "-", "\u2013": "-", "\ufe63": "-", "\uff0d": "-"})
_EXPLICIT = (r"\b(?:the\s+)?(?:final\s+|correct\s+)?(?:answer|option|choice)\s*"
             r"(?:is|would\s+be|should\s+be|=|:)?\s*:?\s*")
_EXPLICIT_TEXT = re.compile(r"\b(?:final\s+|correct\s+)?answer\s*(?:is|would\s+be|should\s+be|=|:)\s*:?\s*(.+?)\s*"
                            r"(?:[.!;]\s|[.!;]?$)", re.IGNORECASE | re.DOTALL)
_WRAP = "*_`'\"“”‘’[](){}<>"
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:(?:,|[ \u00a0\u202f])\d{3})+|\d+)(?:\.\d+)?(?![\d])")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
# "A cat", "I see": a lower-case word after "A" or "I" that is not a verb or conjunction of a letter answer
_ARTICLE_USE = re.compile(r"\s+(?!(?:is|was|and|or|fits|matches|seems|would|should|must|can)\b)[a-z]")
_BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")  # one level of nested braces: \boxed{\frac{1}{2}}
_OPTION_LINE = re.compile(r"^\s*\(?([A-I])[.):]\s*(.+?)\s*$", re.MULTILINE)


def boxed_text(text: str) -> str | None:
    r"""The content of the last ``\boxed{…}`` (one level of nested braces), or None."""
    boxed = _BOXED.findall(text)
    return boxed[-1] if boxed else None


def answer_part(text: str) -> str:
    r"""The CONCLUSION's text when the response has one, else the last ``\boxed{…}``'s content, else the
    whole text; NFKC, dashes as ``-``.
    """
    inner = conclusion_text(text)
    if inner is None:
        inner = boxed_text(text)
    return unicodedata.normalize("NFKC", inner if inner is not None else text).translate(_DASHES).strip()


def options_in(question: str) -> dict[str, str]:
    """The lettered options a question lists, one per line (``A. red``, ``(B) 12``, ``C: blue``),
    or ``{}``; only an unbroken run from A counts.
    """
    found = {}
    for letter, text in _OPTION_LINE.findall(question):
        if letter != LETTERS[len(found)]:
            break
        found[letter] = text
    return found


def normalise_text(text: str) -> str:
    """Lower-case, drop punctuation and articles, collapse whitespace (VQA-style normalisation)."""
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(_ARTICLES.sub(" ", text).split())


def _canonical_number(token: str) -> str:
    value = float(re.sub(r"[,\s\u00a0\u202f]", "", token))
    return str(int(value)) if value.is_integer() else repr(value)


def normalise_number(text: str) -> str | None:
    """The only number of ``text`` (``"2.0"`` → ``"2"``, ``"−1 000"`` → ``"-1000"``), None when it
    holds none or several.
    """
    numbers = _NUMBER.findall(text.translate(_DASHES))
    return _canonical_number(numbers[0]) if len(numbers) == 1 else None


def _explicit_letter(text: str, letters: str) -> str | None:
    """The last "answer is B" / "option (B)" / "answer: **B**" letter (upper case, or wrapped)."""
    pattern = re.compile(_EXPLICIT + r"(?:option\s+)?([*_\[(]*)([A-Ia-i])([*_\])]*)(?![\w-])", re.IGNORECASE)
    found = None
    for match in pattern.finditer(text):
        opened, letter, closed = match.groups()
        if letter in letters or (letter.upper() in letters and (opened or closed)):
            found = letter.upper()
    return found


def _letter_tokens(text: str, letters: str) -> set[str]:
    """Upper-case letters that stand alone as tokens, an article or pronoun ("A cat", "I see") excepted."""
    found = set()
    for match in re.finditer(r"(?<![\w'’-])([A-I])(?![\w'’-])", text):
        letter = match.group(1)
        after = text[match.end():]
        if letter not in letters or (letter in "AI" and re.match(_ARTICLE_USE, after)):
            continue
        found.add(letter)
    return found


def extract_choice(text: str, options: Mapping[str, str] | None = None) -> str | None:
    """An option letter (see the module docstring); ``options`` (letter → text) bounds the letters
    and lets the option's text stand for its letter.
    """
    letters = "".join(options) if options else LETTERS
    part = answer_part(text)
    bare = part.strip(_WRAP + " .:!").strip()
    if len(bare) == 1 and bare.upper() in letters:
        return bare.upper()
    if explicit := _explicit_letter(part, letters):
        return explicit
    lead = re.match(r"[*_\[(]*([A-I])(?:[*_\])]*[.:)]|[*_\])]+)(?:\s|$)|([A-I])\s+(?=[^a-z\s])", part)
    if lead and (lead.group(1) or lead.group(2)) in letters:
        return lead.group(1) or lead.group(2)
    if len(tokens := _letter_tokens(part, letters)) == 1:
        return tokens.pop()
    if options:
        said = normalise_text(part)
        texts = {letter: normalise_text(str(option)) for letter, option in options.items()}
        exact = [letter for letter, option in texts.items() if option and option == said]
        inside = [letter for letter, option in texts.items() if option and f" {option} " in f" {said} "]
        for candidates in (exact, inside):
            if len(candidates) == 1:
                return candidates[0]
    return None


def extract_number(text: str) -> str | None:
    """A number: after "the answer is", else the only one, else the first when the text starts with
    it (answer first), else the last (reasoning first); number words up to twenty when no digit.
    """
    part = answer_part(text)
    if explicit := _EXPLICIT_TEXT.search(part):
        if (number := numbers_in(explicit.group(1))):
            return number[0]
    numbers = numbers_in(part)
    if not numbers:
        return None
    return numbers[0] if len(numbers) == 1 or re.match(r"[\s*_(\[]*-?\d", part) else numbers[-1]


def numbers_in(text: str) -> list[str]:
    """Every number of ``text`` (an :func:`answer_part`), canonical; number words up to twenty when it
    has no digit.
    """
    numbers = [_canonical_number(n) for n in _NUMBER.findall(text)]
    if numbers:
        return numbers
    return [NUMBER_WORDS[w] for w in re.findall(r"[a-z]+", text.lower()) if w in NUMBER_WORDS]


def extract_yes_no(text: str) -> str | None:
    """``yes`` or ``no``: after "the answer is", else leading the text, else the last one."""
    part = answer_part(text).lower()
    explicit = re.findall(_EXPLICIT + r"[*_\"']*(yes|no)\b", part)
    if explicit:
        return explicit[-1]
    if lead := re.match(r"[\s*_\"']*(yes|no)\b", part):
        return lead.group(1)
    words = re.findall(r"\b(yes|no)\b", part)
    return words[-1] if words else None


def extract_text(text: str) -> str | None:
    """The normalised text after "the answer is", else the whole normalised answer."""
    part = answer_part(text)
    explicit = _EXPLICIT_TEXT.search(part)
    return normalise_text(explicit.group(1) if explicit else part) or None


def extract_answer(text: str, answer_type: str, options: Mapping[str, str] | None = None) -> str | None:
    """The normalised answer of ``answer_type`` in a response (its CONCLUSION when it has one)."""
    if answer_type == "choice":
        return extract_choice(text, options)
    if answer_type == "number":
        return extract_number(text)
    if answer_type == "yesno":
        return extract_yes_no(text)
    if answer_type == "text":
        return extract_text(text)
    raise ValueError(f"answer_type must be one of {ANSWER_TYPES}, got {answer_type!r}")


def infer_answer_type(gold: str) -> str:
    """How a gold answer is compared: an option letter, a number, yes/no, or free text."""
    gold = gold.strip()
    if re.fullmatch(r"\(?[A-I]\)?\.?", gold):
        return "choice"
    if re.fullmatch(_NUMBER.pattern + r"\.?", gold.translate(_DASHES)):
        return "number"
    if normalise_text(gold) in ("yes", "no"):
        return "yesno"
    return "text"


def is_correct(prediction: str, gold: str, answer_type: str | None = None,
               options: Mapping[str, str] | None = None) -> bool:
    """Rule-based match of a response against a gold answer (a free-text gold of yes/no is read as yes/no)."""
    answer_type = answer_type or infer_answer_type(gold)
    if answer_type == "text" and normalise_text(gold) in ("yes", "no"):
        answer_type = "yesno"
    predicted = extract_answer(prediction, answer_type, options)
    return predicted is not None and predicted == extract_answer(gold, answer_type, options)


def answers_agree(responses: list[str], options: Mapping[str, str] | None = None) -> bool:
    """Rule-based equivalence of the responses' answers (Stage III self-consistency filter).

    Every response needs a non-empty CONCLUSION. They agree when all name the same option letter,
    else all the same yes/no, else the same number, else the same normalised text — the first kind
    that every one of them can be read as. ``options``: the question's options (:func:`options_in`);
    ``{}`` says it has none, so no answer is read as a letter; None, unknown (letters A–I).
    """
    conclusions = [conclusion_text(r) for r in responses]
    if not conclusions or any(c is None or not c.strip() for c in conclusions):
        return False
    for answer_type in ANSWER_TYPES[1:] if options == {} else ANSWER_TYPES:
        answers = [extract_answer(f"<CONCLUSION>{c}</CONCLUSION>", answer_type, options) for c in conclusions]
        if all(a is not None for a in answers):
            return len(set(answers)) == 1
    return False
