"""Batched generation: inputs checked, batches equal to one-at-a-time, per-item random streams."""

import pytest

from sherlock.data.schema import open_image
from sherlock.decoding import DecodingConfig
from sherlock.generation import generate, item_seed
from sherlock.models.loading import load_vlm
from sherlock.reasoning import truncate


def test_generation_rejects_mismatched_inputs(tiny_model_dir):
    model, processor = load_vlm(tiny_model_dir)
    with pytest.raises(ValueError, match="2 prompts, 1 images"):
        generate(model, processor, ["a", "b"], [None])


def test_batched_generation_matches_one_at_a_time(tiny_model_dir, synthetic_data):
    model, processor = load_vlm(tiny_model_dir)
    records = synthetic_data.records[:4]
    images = [open_image(synthetic_data.image_root, r) for r in records]
    prefixes = [truncate(r.response, 3)[0] for r in records[:2]] + ["", ""]
    questions = [r.question for r in records]
    batched = generate(model, processor, questions, images, prefixes, DecodingConfig(max_new_tokens=16, batch_size=4))
    single = [generate(model, processor, [q], [i], [p], DecodingConfig(max_new_tokens=16, batch_size=1))[0]
              for q, i, p in zip(questions, images, prefixes)]
    assert batched == single


def test_sampling_streams_are_per_item_and_independent(tiny_model_dir, synthetic_data):
    """An item's sampled response depends on its seed, stream and key, not on its batch or position."""
    model, processor = load_vlm(tiny_model_dir)
    records = synthetic_data.records[:6]
    questions, keys = [r.question for r in records], [r.id for r in records]
    images = [open_image(synthetic_data.image_root, r) for r in records]
    sampled = DecodingConfig(max_new_tokens=10, temperature=1.0, batch_size=4, seed=3)
    first = generate(model, processor, questions, images, config=sampled, stream="Y1", keys=keys)
    reordered = generate(model, processor, questions[::-1], images[::-1], stream="Y1", keys=keys[::-1],
                         config=DecodingConfig(max_new_tokens=10, temperature=1.0, batch_size=2, seed=3))
    assert reordered[::-1] == first
    other_stream = generate(model, processor, questions, images, config=sampled, stream="Y2", keys=keys)
    assert other_stream != first  # six 10-token samples at T = 1 from a random model
    assert item_seed(3, "Y1", keys[0]) != item_seed(3, "Y2", keys[0]) != item_seed(4, "Y1", keys[0])
    # top_p so small that only the most likely token survives: sampling is greedy decoding
    nucleus = DecodingConfig(max_new_tokens=10, temperature=1.0, top_p=1e-6, batch_size=4)
    assert generate(model, processor, questions, images, config=nucleus) == generate(
        model, processor, questions, images, config=DecodingConfig(max_new_tokens=10, batch_size=4))


def test_an_abandoned_generate_call_stops_early(tiny_model_dir, synthetic_data):
    """``abandoned`` turning true ends the call at the next token; until then nothing changes."""
    model, processor = load_vlm(tiny_model_dir)
    records = synthetic_data.records[:2]
    images = [open_image(synthetic_data.image_root, r) for r in records]
    prompts = [r.question for r in records]
    config = DecodingConfig(max_new_tokens=24)
    steps = []

    def after_three_tokens() -> bool:
        steps.append(1)
        return len(steps) >= 3

    full = generate(model, processor, prompts, images, config=config)
    never = generate(model, processor, prompts, images, config=config, abandoned=lambda: False)
    cut = generate(model, processor, prompts, images, config=config, abandoned=after_three_tokens)
    assert never == full
    length = [len(processor.tokenizer(text, add_special_tokens=False).input_ids) for text in cut + full]
    assert 3 * max(length[:2]) < min(length[2:]), length  # 3 of 24 tokens (re-tokenized text: about)


def test_a_question_with_several_images_gives_the_model_every_one(tiny_model_dir, synthetic_data):
    """MMMU's questions hold several images: one placeholder each in the user turn, all of them encoded."""
    model, processor = load_vlm(tiny_model_dir)
    records = synthetic_data.records[:3]
    images = [open_image(synthetic_data.image_root, r) for r in records]
    shown = []
    original = type(processor).__call__

    def observe(self, *args, **kwargs):  # the real processor, its inputs recorded
        shown.append([len(question) for question in kwargs["images"]])
        return original(self, *args, **kwargs)

    type(processor).__call__ = observe
    try:
        config = DecodingConfig(max_new_tokens=8, batch_size=2)
        both = generate(model, processor, ["q", "q"], [images[:2], images[2]], config=config)
        swapped = generate(model, processor, ["q"], [[images[0], images[2]]], config=config)
    finally:
        type(processor).__call__ = original
    assert shown == [[2, 1], [2]] and all(isinstance(text, str) for text in both + swapped)


def test_octopus_rounds_continue_the_response_after_an_appended_separator(tiny_model_dir, synthetic_data):
    """Round 0 is o1 of the trigger prompt (the direct stream), round k the greedy attempt after the response
    so far and SEP; no attempt runs past a ``<self-correction>``."""
    import dataclasses

    from sherlock.generation import answer_continuing, trigger_prompts
    from sherlock.octopus import STAGES_INSTRUCTION
    from sherlock.reasoning import SC_OPEN, SEP

    model, processor = load_vlm(tiny_model_dir)
    records = synthetic_data.records[:3]
    questions, keys = [r.question for r in records], [r.id for r in records]
    images = [open_image(synthetic_data.image_root, r) for r in records]
    direct = DecodingConfig(max_new_tokens=10, temperature=1.0, top_p=0.9, batch_size=4, seed=2)
    prompts = trigger_prompts(questions, "stages")
    rounds = answer_continuing(model, processor, prompts, images, 2, direct, keys=keys)
    assert prompts == [f"{q}\n\n{STAGES_INSTRUCTION}" for q in questions]
    assert rounds[0] == generate(model, processor, prompts, images, config=direct, stream="direct", keys=keys,
                                 one_attempt=True)
    assert rounds[0] != generate(model, processor, questions, images, config=direct, stream="direct", keys=keys)
    greedy, so_far = dataclasses.replace(direct, temperature=0.0, top_p=1.0), rounds[0]
    for attempts in rounds[1:]:
        prefixes = [text + SEP for text in so_far]
        assert attempts == generate(model, processor, prompts, images, prefixes, greedy, one_attempt=True)
        so_far = [prefix + attempt for prefix, attempt in zip(prefixes, attempts)]
    assert len(rounds) == 3 and not any(SC_OPEN in attempt for attempts in rounds for attempt in attempts)


def test_an_attempt_ends_at_its_conclusion_or_before_a_further_correction():
    from sherlock.reasoning import SEP, cut_attempt

    first, second = "<CONCLUSION>1</CONCLUSION>", "<SUMMARY>again</SUMMARY>"
    assert cut_attempt(first + SEP + second) == first
    assert cut_attempt("<SUMMARY>s</SUMMARY>" + SEP + first, one_attempt=True) == "<SUMMARY>s</SUMMARY>"
    assert cut_attempt("<SUMMARY>s</SUMMARY>" + SEP + first) == "<SUMMARY>s</SUMMARY>" + SEP + first
    assert cut_attempt("no answer", one_attempt=True) == "no answer"
