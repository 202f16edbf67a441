"""The one answer extractor (:mod:`sherlock.answers`) on responses as models write them."""

import pytest

from sherlock.answers import (
    answers_agree,
    extract_answer,
    infer_answer_type,
    is_correct,
    normalise_number,
    options_in,
)

ABCD = {"A": "3", "B": "12", "C": "red circle", "D": "none of the above"}
NINE = {letter: f"option {n}" for n, letter in enumerate("ABCDEFGHI", 1)}
QUESTION = "How many shapes are there?\nOptions:\nA. 3\nB. 12\nC. red circle\nD. none of the above"

# (response, answer type, options, the answer read; None: nothing can be read)
CASES = [
    # option letters, bare and wrapped
    ("B", "choice", ABCD, "B"),
    ("b", "choice", ABCD, "B"),
    ("B.", "choice", ABCD, "B"),
    ("(B)", "choice", ABCD, "B"),
    ("[B]", "choice", ABCD, "B"),
    ("**B**", "choice", ABCD, "B"),
    ("`C`", "choice", ABCD, "C"),
    ("'D'", "choice", ABCD, "D"),
    ("B. 12", "choice", ABCD, "B"),
    ("(C) red circle", "choice", ABCD, "C"),
    ("C: red circle", "choice", ABCD, "C"),
    ("**B**: 12", "choice", ABCD, "B"),
    ("D 7", "choice", ABCD, "D"),
    # explicit phrases
    ("The answer is D.", "choice", ABCD, "D"),
    ("The correct answer is (b).", "choice", ABCD, "B"),
    ("Answer: C", "choice", ABCD, "C"),
    ("The final answer is **A**", "choice", ABCD, "A"),
    ("Option B is correct.", "choice", ABCD, "B"),
    ("A cat is on the mat, so the answer is B.", "choice", ABCD, "B"),
    ("I think the answer is C, not A.", "choice", ABCD, "C"),
    ("The answer is not A; the answer is B.", "choice", ABCD, "B"),
    # a letter standing alone in a sentence
    ("It must be C.", "choice", ABCD, "C"),
    ("A is correct.", "choice", ABCD, "A"),
    ("I see two shapes, so B.", "choice", ABCD, "B"),
    # articles and pronouns are not letters
    ("The answer is a circle.", "choice", ABCD, None),
    ("A large tree.", "choice", ABCD, None),
    ("A cat.", "choice", ABCD, None),
    ("I am not sure.", "choice", ABCD, None),
    # the option's text stands for its letter
    ("12", "choice", ABCD, "B"),
    ("There are 12 shapes.", "choice", ABCD, "B"),
    ("It is a red circle.", "choice", ABCD, "C"),
    ("none of the above", "choice", ABCD, "D"),
    # letters only up to the number of options; MMMU's ninth option
    ("E", "choice", ABCD, None),
    ("The answer is F.", "choice", ABCD, None),
    ("I", "choice", NINE, "I"),
    ("The answer is (I).", "choice", NINE, "I"),
    ("H", "choice", NINE, "H"),
    # two letters with nothing to choose between them
    ("B or C", "choice", ABCD, None),
    ("Between B and C.", "choice", ABCD, None),
    ("maybe", "choice", ABCD, None),
    # numbers
    ("2", "number", None, "2"),
    ("2.0", "number", None, "2"),
    ("3.5 metres", "number", None, "3.5"),
    ("There are 1,000 people.", "number", None, "1000"),
    ("1 000", "number", None, "1000"),
    ("\u22123.5", "number", None, "-3.5"),
    ("The temperature is \u22124 degrees.", "number", None, "-4"),
    ("-7", "number", None, "-7"),
    ("The answer is 5.", "number", None, "5"),
    ("The answer is 5 because 2 + 3 = 5.", "number", None, "5"),
    ("There are 3 red shapes and 2 blue shapes, so 5 in total.", "number", None, "5"),
    ("5 shapes (3 red, 2 blue)", "number", None, "5"),
    ("three", "number", None, "3"),
    ("There are seven shapes.", "number", None, "7"),
    ("**4**", "number", None, "4"),
    ("no number here", "number", None, None),
    ("0.25", "number", None, "0.25"),
    # yes / no
    ("Yes", "yesno", None, "yes"),
    ("no.", "yesno", None, "no"),
    ("Yes, there is no cat.", "yesno", None, "yes"),
    ("No, the circle is not red.", "yesno", None, "no"),
    ("There is no doubt: yes", "yesno", None, "yes"),
    ("The answer is no.", "yesno", None, "no"),
    ("There are no red shapes, so the answer is no.", "yesno", None, "no"),
    ("**Yes**", "yesno", None, "yes"),
    ("I cannot tell.", "yesno", None, None),
    # free text
    ("The Red Square!", "text", None, "red square"),
    ("The answer is red.", "text", None, "red"),
    ("Answer: a blue triangle", "text", None, "blue triangle"),
    ("circle", "text", None, "circle"),
]


@pytest.mark.parametrize("conclusion, answer_type, options, expected", CASES)
def test_extract_answer_table(conclusion, answer_type, options, expected):
    response = f"<SUMMARY>s</SUMMARY><CAPTION>c</CAPTION><REASONING>r</REASONING><CONCLUSION>{conclusion}</CONCLUSION>"
    assert extract_answer(response, answer_type, options) == expected
    assert extract_answer(conclusion, answer_type, options) == expected  # no CONCLUSION block: the whole text


def test_the_table_has_sixty_cases_of_every_kind():
    assert len(CASES) >= 60
    assert {answer_type for _, answer_type, _, _ in CASES} == {"choice", "number", "yesno", "text"}


def test_only_the_conclusion_is_read_when_there_is_one():
    response = "<REASONING>The answer is A, I thought, then 7.</REASONING><CONCLUSION>B</CONCLUSION>"
    assert extract_answer(response, "choice", ABCD) == "B"
    assert extract_answer(response, "number") is None


def test_options_are_read_from_the_question():
    assert options_in(QUESTION) == ABCD
    assert options_in("Which colour?\n(A) red\n(B) blue") == {"A": "red", "B": "blue"}
    assert options_in("How many shapes?") == {}
    assert options_in("Options:\nB. 1\nC. 2") == {}  # a run of options starts at A


@pytest.mark.parametrize("gold, answer_type", [("A", "choice"), ("(C)", "choice"), ("I", "choice"), ("12", "number"),
                                                ("\u22123.5", "number"), ("1,000", "number"), ("Yes", "yesno"),
                                                ("no", "yesno"), ("circle", "text"), ("a red circle", "text")])
def test_infer_answer_type(gold, answer_type):
    assert infer_answer_type(gold) == answer_type


def test_is_correct_compares_what_the_extractor_reads():
    assert is_correct("<CONCLUSION>The answer is (b).</CONCLUSION>", "B", "choice", ABCD)
    assert is_correct("<CONCLUSION>12</CONCLUSION>", "B", "choice", ABCD)
    assert not is_correct("<CONCLUSION>A large tree.</CONCLUSION>", "A", "choice", ABCD)
    assert is_correct("<CONCLUSION>\u22123.5</CONCLUSION>", "-3.5")
    assert not is_correct("<CONCLUSION>3.5</CONCLUSION>", "\u22123.5")
    assert is_correct("<CONCLUSION>There is no doubt: yes</CONCLUSION>", "yes", "text")  # a yes/no gold is yes/no
    assert not is_correct("<CONCLUSION>maybe</CONCLUSION>", "B", "choice")


@pytest.mark.parametrize("conclusions, options, agree", [
    (["B", "B.", "(B) three"], None, True),
    (["B", "B", "C"], None, False),
    (["3", "3.0", "three: 3"], None, True),
    (["a red circle", "Red circle.", "the red circle"], None, True),
    (["red", "blue", "red"], None, False),
    (["A cat.", "A dog.", "A tree."], None, False),  # free text starting with "A" does not agree as option A
    (["B", "12", "The answer is B."], ABCD, True),  # the option's text is its letter
    (["Yes", "yes, it is", "There is no doubt: yes"], None, True),
    (["Yes", "No", "yes"], None, False),
    (["\u22122", "-2", "-2.0"], {}, True),
    (["A", "A", "A"], {}, False),  # no options: "A" is no letter, and as text only an article
])
def test_rule_based_agreement(conclusions, options, agree):
    responses = [f"<CONCLUSION>{c}</CONCLUSION>" for c in conclusions]
    assert answers_agree(responses, options) is agree


def test_agreement_needs_a_conclusion_in_every_response():
    assert not answers_agree(["<CONCLUSION>B</CONCLUSION>", "no conclusion", "<CONCLUSION>B</CONCLUSION>"])


def test_normalise_number_reads_one_number_or_none():
    assert normalise_number("1 000") == "1000" and normalise_number("\u22122.50") == "-2.5"
    assert normalise_number("3 and 4") is None and normalise_number("none") is None
