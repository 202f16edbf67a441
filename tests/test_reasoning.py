import pytest

from sherlock.reasoning import ReasoningFormatError, cut_after_conclusion, parse_stages, truncate

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
