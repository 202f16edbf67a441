"""Chat messages in the Hugging Face multimodal format: the image first in the user turn."""

from __future__ import annotations


def user_turn(text: str, num_images: int = 1) -> dict:
    """One user turn holding the image (or ``num_images`` images), then ``text`` (the Sherlock
    training layout, spec §1).
    """
    return {"role": "user", "content": [{"type": "image"}] * num_images + [{"type": "text", "text": text}]}


def follow_up_turn(text: str) -> dict:
    """A later user turn of the same chat: text only (the image stays in the first turn)."""
    return {"role": "user", "content": [{"type": "text", "text": text}]}


def assistant_turn(text: str) -> dict:
    """An assistant message of ``text`` in the processors' chat format."""
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


Context = tuple[tuple[str, str], ...]  # earlier (question, response) turns of a conversation, oldest first


def prompt_turns(text: str, context: Context = (), num_images: int = 1) -> list[dict]:
    """The messages that end with the user turn ``text``: the earlier turns of its conversation first,
    the image in the first user turn (as LLaVA-CoT's multi-turn lines are laid out).
    """
    questions = [question for question, _ in context] + [text]
    messages = [user_turn(questions[0], num_images)]
    for (_, response), question in zip(context, questions[1:]):
        messages += [assistant_turn(response), follow_up_turn(question)]
    return messages


def chat_prompt(text: str, context: Context = ()) -> str | list[dict]:
    """What :func:`sherlock.generation.generate` takes: the text alone (one user turn with the image
    or images), or the messages after the earlier turns of its conversation.
    """
    return prompt_turns(text, context) if context else text


def conversation(prompt: str, response: str, context: Context = ()) -> list[dict]:
    """A user prompt (after its conversation's earlier turns, the image first) and the assistant's response."""
    return [*prompt_turns(prompt, context), assistant_turn(response)]
