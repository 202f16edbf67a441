"""The rule-based consistency verifier on the embedded task's own gold responses and on hand-made breaks of
them: it accepts every gold response and catches each kind of inconsistency it claims to."""

import re

import pytest

from sherlock.answers import options_in
from sherlock.config import ConfigError
from sherlock.data.llava_cot import load_data
from sherlock.data.synthetic import generate_synthetic
from sherlock.verifiers import consistency, inconsistencies, load_verifier


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    # multiple choice too: the verifier reads the letter step of responses to questions with options
    return load_data(generate_synthetic(tmp_path_factory.mktemp("synthetic"), 300, seed=11,
                                        choice_fraction=0.3)).records


def found(record, response: str) -> list[str]:
    return inconsistencies(record.question, response, options_in(record.question))


def test_every_gold_response_is_consistent(records):
    assert [r.id for r in records if found(r, r.response)] == []


def test_a_conclusion_that_is_not_the_reasoning_s_is_caught_on_every_item(records):
    def other(answer: str, answer_type: str) -> str:
        if answer_type == "number":
            return str(int(answer) + 1)
        if answer_type == "choice":
            return "ABCD"[("ABCD".index(answer) + 1) % 4]
        return "purple" if answer != "purple" else "red"

    for record in records:
        (conclusion,) = re.findall(r"<CONCLUSION>(.*)</CONCLUSION>", record.response)
        broken = record.response.replace(f"<CONCLUSION>{conclusion}</CONCLUSION>",
                                         f"<CONCLUSION>{other(conclusion, record.answer_type)}</CONCLUSION>")
        assert found(record, broken), record.id


RESPONSE = ("<SUMMARY>I will count.</SUMMARY>\n\n<CAPTION>The image shows 3 shapes: top left: a small red circle; "
            "center: a large blue square; bottom right: a small red triangle.</CAPTION>\n\n<REASONING>{reasoning}"
            "</REASONING>\n\n<CONCLUSION>{conclusion}</CONCLUSION>")


@pytest.mark.parametrize("reasoning, conclusion, why", [
    ("The red shapes are: the small red circle at top left, the small red square at bottom right. That makes 2.",
     "2", "puts a small red square at bottom right; the caption has small red triangle there"),
    ("The red shapes are: the small red circle at top left. That makes 2.", "2", "a listing of 1 is counted as 2"),
    ("The circles are: the small red circle at top left, so 1. The squares are: the large blue square at center, "
     "so 1. 1 + 1 = 3.", "3", "1 + 1 is not 3"),
    ("At center there is a large green square. So the shape is a square.", "square", "the caption has large blue"),
    ("The red shapes are: the small red circle at top left, the small red triangle at bottom right. That makes 2.",
     "3", "the reasoning ends at 2"),
])
def test_each_kind_of_inconsistency_is_named(reasoning, conclusion, why):
    problems = inconsistencies("How many red shapes are there?", RESPONSE.format(reasoning=reasoning,
                                                                                 conclusion=conclusion), {})
    assert any(why in problem for problem in problems), problems


def test_options_are_checked_against_the_question_and_the_conclusion():
    question = "How many red shapes are there?\nOptions:\nA. 4\nB. 2\nC. 0\nD. 1"
    reasoning = ("The red shapes are: the small red circle at top left, the small red triangle at bottom right. "
                 "That makes 2. The answer 2 is option {letter}.")
    assert consistency(question, RESPONSE.format(reasoning=reasoning.format(letter="B"), conclusion="B"),
                       options_in(question))
    assert "option A is not 2" in inconsistencies(question, RESPONSE.format(
        reasoning=reasoning.format(letter="A"), conclusion="A"), options_in(question))
    assert any("the conclusion 'C'" in p for p in inconsistencies(question, RESPONSE.format(
        reasoning=reasoning.format(letter="B"), conclusion="C"), options_in(question)))


def test_a_missing_stage_is_rejected_and_prose_it_cannot_read_is_accepted():
    assert inconsistencies("q", "The answer is 2.", {}) == ["missing stage(s): SUMMARY, CAPTION, REASONING, CONCLUSION"]
    assert inconsistencies("q", RESPONSE.format(reasoning="Two.", conclusion=" "), {}) == ["the conclusion is empty"]
    prose = ("<SUMMARY>Read the chart.</SUMMARY><CAPTION>A bar chart of sales by year.</CAPTION>"
             "<REASONING>The tallest bar is 2019.</REASONING><CONCLUSION>2019</CONCLUSION>")
    assert consistency("Which year sold most?", prose, {})


def test_verifiers_are_chosen_by_name_among_registered_ones():
    assert load_verifier("consistency") is consistency
    with pytest.raises(ConfigError, match="unknown verifier 'sherlock.verifiers:consistency'"):
        load_verifier("sherlock.verifiers:consistency")  # a name, never a module path
