"""Chat messages in the Hugging Face multimodal format: the image first in the user turn."""

from __future__ import annotations


def user_turn(text: str, num_images: int = 1) -> dict:
    """One user turn holding the image (or ``num_images`` images), then ``text`` (the Sherlock
    training layout, spec §1)."""
    return {"role": "user", "content": [{"type": "image"}] * num_images + [{"type": "text", "text": text}]}


def follow_up_turn(text: str) -> dict:
    """A later user turn of the same chat: text only (the image stays in the first turn)."""
    return {"role": "user", "content": [{"type": "text", "text": text}]}


def assistant_turn(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def conversation(prompt: str, response: str) -> list[dict]:
    """A user prompt (with the image) and the assistant's response."""
    return [user_turn(prompt), assistant_turn(response)]
