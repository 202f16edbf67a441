"""Prompts of the three methods, as published (method spec §1 Sherlock, §2 SCL, §3 STIC)."""

from __future__ import annotations

# --- Sherlock: the self-correction instruction t, R(Q, E) (paper App. B.1) ---------------------

SHERLOCK_CORRECTION_TEMPLATE = """Below is a QUESTION from a user and an EXAMPLE RESPONSE.
Please provide a more helpful RESPONSE, improving the EXAMPLE RESPONSE by making the content even clearer, more accurate, and with a reasonable logic.
Focus on addressing the human's QUESTION step by step based on the image without including irrelevant content.

QUESTION:
{question}

EXAMPLE RESPONSE:
{example_response}

Now, refine and improve the RESPONSE further. You can consider two approaches:
1. REFINEMENT: If the SUMMARY section in the response is closely related to the question, the CAPTION section accurately describes the image, the REASONING section is logically clear and correct without any contradictions, and the CONCLUSION provides an accurate answer based on the previous steps, enhance clarity, accuracy, or reasoning logic as needed.
2. NEW RESPONSE: If the SUMMARY section incorrectly summarizes the intent of the issue, the CAPTION contains content unrelated to or incorrect about the image, there are logical errors or contradictions in the REASONING, or the CONCLUSION incorrectly states the findings, please enhance the accuracy and quality of each step, and craft a more effective RESPONSE that thoroughly resolves the QUESTION.

RESPONSE:"""


def correction_prompt(question: str, example_response: str) -> str:
    """R(Q, E): the Sherlock correction prompt holding the question and a whole previous response.

    The image goes first in the same user turn (the chat template places it); the response is
    inserted with its stage tags.
    """
    return SHERLOCK_CORRECTION_TEMPLATE.format(question=question, example_response=example_response)


# The cheapest self-correction: the model's own answer, continued after this cue (arXiv 2507.02778)
WAIT_CUE = "Wait,"
# how a correction round asks (sherlock.generation): a new turn R(Q, previous), or Octopus's continued response
CORRECTIONS = ("prompt", "continue")


# --- SCL: two-turn self-correction (spec §2) ------------------------------------------------

SCL_STEP_BY_STEP = "Explain your reasoning step-by-step."
SCL_ANSWER_FORMAT = (
    " Your final answer should be put between two ##, like ## A ## (if your final answer is A),"
    " at the end of your response."
)
SCL_REVIEW_PROMPTS = (
    "Review your previous answer and find problems with your answer. Based on the problems you found,"
    " improve your answer.",
    "Review your previous answer and ensure that all relevant aspects of the image have been considered."
    " Are there any elements or details that you missed? Based on your review, improve your answer.",
    "Review your contextual understanding of the image. Have you correctly interpreted the overall context"
    " and purpose of the scene? Based on your review, improve your answer.",
    "Review your answer and ensure that your understanding of the image is comprehensive and detailed."
    " Are there any aspects of the scene that you have omitted or misinterpreted? Based on your review,"
    " improve your answer.",
)
SCL_DEFAULT_REVIEW_PROMPT = 2  # the default of the authors' inference.py


def scl_first_turn(question_with_options: str) -> str:
    """Turn 1: question and options, the step-by-step request and the ``## X ##`` answer format."""
    return f"{question_with_options}\n{SCL_STEP_BY_STEP}{SCL_ANSWER_FORMAT}"


def scl_review_turn(review_prompt: int = SCL_DEFAULT_REVIEW_PROMPT) -> str:
    """Turn 2 (same chat): review prompt ``review_prompt`` (0-3), step-by-step, answer format."""
    return f"{SCL_REVIEW_PROMPTS[review_prompt]} {SCL_STEP_BY_STEP}{SCL_ANSWER_FORMAT}"


# --- STIC: image-comprehension self-training (spec §3; yihedeng9/STIC generate_pref.py) -------

STIC_DESCRIPTION_PROMPT = """Please provide a detailed description of the image, focusing on the following.
Identify the main subjects (people, animals, objects) in the image and describe what they are doing.
Describe the setting of the image. Is it indoors or outdoors? What kind of environment or location does it depict?
What mood does the image convey? Are there any specific elements (such as lighting, weather, expressions) that contribute to this atmosphere?
Describe the dominant colors and the overall composition. How do these elements affect the image's impact?
Point out any details or symbols that might be relevant to understanding the image's meaning or context.
If applicable, provide interpretations of what the image might represent or communicate."""

STIC_SIMPLE_PROMPTS = (
    "Illustrate the details of the picture.",
    "Summarize the visual content presented.",
    "Explain what is depicted in the photograph.",
    "Outline the key elements captured in the image.",
    "Detail the composition and subjects within the frame.",
    "Convey the atmosphere and mood represented in the snapshot.",
    "Interpret the scene shown in the image.",
    "Identify and describe the main focal points in the visual.",
)

STIC_HALLUCINATION_PROMPTS = (
    "Describe the image with imaginative objects that may exist in the scene.",
    "Enrich the description by adding hypothetical objects or characters that could be part of the scene.",
    "Suggest and detail practical items or people that could logically inhabit the image's setting.",
    "Incorporate elements that, though absent, would seamlessly fit into the context of the picture.",
    "Imagine and describe additional everyday objects or activities taking place just out of frame.",
    "Augment the scene with details of potential events or items that are plausible.",
    "Conceive of and detail natural elements, such as weather or animals, that could realistically enter"
    " the scene. Make the description affirmative.",
    "Invent and incorporate details of practical tools, vehicles, or gadgets that could be expected in a"
    " similar scenario.",
)

STIC_DAR_PROMPT = "Detail the composition and subjects within the frame."


def stic_description_infused(question: str, description: str) -> str:
    """Stage 2 / DaR: prefix the question with the model's own image description."""
    return f"Image description:\n{description}\n\n{question}"
