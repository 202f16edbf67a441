from sherlock import prompts


def test_correction_prompt_holds_question_and_whole_response():
    response = "<SUMMARY>s</SUMMARY><CAPTION>c</CAPTION><REASONING>r</REASONING><CONCLUSION>2</CONCLUSION>"
    text = prompts.correction_prompt("How many?", response)
    assert "QUESTION:\nHow many?\n\nEXAMPLE RESPONSE:\n" + response + "\n\nNow, refine" in text
    assert text.startswith("Below is a QUESTION from a user and an EXAMPLE RESPONSE.")
    assert text.endswith("RESPONSE:")


def test_scl_turns():
    first = prompts.scl_first_turn("Which one?\nA. x\nB. y")
    assert first.startswith("Which one?\nA. x\nB. y\nExplain your reasoning step-by-step. Your final answer")
    review = prompts.scl_review_turn()
    assert review.startswith("Review your contextual understanding of the image.")
    assert len(prompts.SCL_REVIEW_PROMPTS) == 4


def test_stic_prompt_sets():
    assert len(prompts.STIC_SIMPLE_PROMPTS) == 8
    assert len(prompts.STIC_HALLUCINATION_PROMPTS) == 8
    assert prompts.stic_description_infused("Q?", "a dog") == "Image description:\na dog\n\nQ?"
