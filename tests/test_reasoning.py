import pytest

from sherlock.reasoning import (
    ReasoningFormatError,
    cut_after_conclusion,
    extract_answer,
    infer_answer_type,
    is_correct,
    parse_stages,
    truncate,
)

RESPONSE = (
    "<SUMMARY>Count the red shapes.</SUMMARY>\n\n"
    "<CAPTION>Two red circles and a blue square.</CAPTION>\n\n"
    "<REASONING>The red shapes are two circles. So one plus one is two.</REASONING>\n\n"
    "<CONCLUSION>2</CONCLUSION>"
)


def test_parse_stages_reads_each_block():
    steps = parse_stages(RESPONSE)
    assert steps.summary == "Count the red shapes."
    assert steps.caption == "Two red circles and a blue square."
    assert steps.conclusion == "2"


@pytest.mark.parametrize(
    "bad, message",
    [
        (RESPONSE.replace("<CAPTION>Two red circles and a blue square.</CAPTION>", ""), "CAPTION"),
        (RESPONSE.replace("</REASONING>", ""), "REASONING"),
        ("<CAPTION>x</CAPTION><SUMMARY>y</SUMMARY><REASONING>z</REASONING><CONCLUSION>1</CONCLUSION>", "order"),
        ("plain text answer", "SUMMARY"),
    ],
)
def test_parse_stages_rejects_malformed(bad, message):
    with pytest.raises(ReasoningFormatError, match=message):
        parse_stages(bad)


def test_truncation_steps_follow_the_paper():
    prefixes = {step: truncate(RESPONSE, step)[0] for step in range(1, 5)}
    assert prefixes[1] == ""
    assert prefixes[2] == "<SUMMARY>Count the red shapes.</SUMMARY>\n\n"
    assert prefixes[3].endswith("</CAPTION>\n\n") and prefixes[3].startswith(prefixes[2])
    # i = 4: SUMMARY, CAPTION and the first half (6 of 12 words) of REASONING
    assert prefixes[4] == prefixes[3] + "<REASONING>The red shapes are two circles."
    for step in range(1, 5):
        prefix, suffix = truncate(RESPONSE, step)
        assert prefix + suffix == RESPONSE


def test_truncation_rejects_out_of_range_step():
    with pytest.raises(ValueError, match="1..4"):
        truncate(RESPONSE, 0)
    with pytest.raises(ValueError, match="1..4"):
        truncate(RESPONSE, 5)


def test_cut_after_conclusion_drops_trailing_text():
    assert cut_after_conclusion(RESPONSE + "<SUMMARY>again") == RESPONSE
    assert cut_after_conclusion("no end") == "no end"


@pytest.mark.parametrize(
    "conclusion, answer_type, expected",
    [
        ("B", "choice", "B"),
        ("(C) 12 apples", "choice", "C"),
        ("The answer is D.", "choice", "D"),
        ("There are 1,000 people.", "number", "1000"),
        ("2.0", "number", "2"),
        ("3.5 metres", "number", "3.5"),
        ("The Red Square!", "text", "red square"),
        ("no number here", "number", None),
    ],
)
def test_extract_answer(conclusion, answer_type, expected):
    response = RESPONSE.replace("<CONCLUSION>2</CONCLUSION>", f"<CONCLUSION>{conclusion}</CONCLUSION>")
    assert extract_answer(response, answer_type) == expected


def test_is_correct_uses_the_conclusion_and_type():
    assert is_correct(RESPONSE, "2")
    assert not is_correct(RESPONSE, "3")
    assert infer_answer_type("A") == "choice"
    assert infer_answer_type("12") == "number"
    assert infer_answer_type("circle") == "text"
    assert not is_correct("<CONCLUSION>maybe</CONCLUSION>", "B", "choice")
