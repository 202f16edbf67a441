"""Octopus's tags as single tokens (:func:`sherlock.models.loading.add_tokens`) on every family, and the
cold-start SFT that adds them (``sc_tag_tokens``)."""

import pytest
import torch

from sherlock.chat import conversation
from sherlock.data.schema import open_image
from sherlock.models.families import FAMILIES
from sherlock.models.loading import add_tokens, load_vlm
from sherlock.reasoning import SC_CLOSE, SC_OPEN, SEP

TAGS = (SC_OPEN, SC_CLOSE)


def _batch(processor, data, text_of=lambda r: r.response):
    records = data.records[:2]
    texts = [processor.apply_chat_template(conversation(r.question, text_of(r))) for r in records]
    return processor(images=[[open_image(data.image_root, r)] for r in records], text=texts, padding=True,
                     return_tensors="pt")


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_tags_become_single_tokens_that_start_as_their_pieces_mean_and_survive_a_reload(
        name, family_model_dirs, synthetic_data, tmp_path):
    model, processor = load_vlm(family_model_dirs[name], dtype=torch.float32)
    tokenizer = processor.tokenizer
    pieces = {tag: tokenizer(tag, add_special_tokens=False).input_ids for tag in TAGS}
    assert all(len(ids) > 1 for ids in pieces.values())
    plain = _batch(processor, synthetic_data)
    with torch.no_grad():
        before = model(**plain).logits
    text_rows = model.config.get_text_config().vocab_size
    extra = model.get_input_embeddings().num_embeddings - text_rows  # Mllama: 8 rows beyond the vocabulary

    ids = add_tokens(model, processor, TAGS)
    assert add_tokens(model, processor, TAGS) == ids  # a second call adds nothing
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    reloaded, reprocessor = load_vlm(tmp_path, dtype=torch.float32)

    sep = reprocessor.tokenizer(SEP, add_special_tokens=False).input_ids
    assert [i for i in sep if i in ids] == ids and reprocessor.tokenizer.decode(sep) == SEP
    embed, head = reloaded.get_input_embeddings().weight, reloaded.get_output_embeddings().weight
    assert embed.shape[0] == reloaded.config.get_text_config().vocab_size + extra
    for tag, row in zip(TAGS, ids, strict=True):
        torch.testing.assert_close(embed[row], embed[pieces[tag]].mean(0))
        torch.testing.assert_close(head[row], head[pieces[tag]].mean(0))
    with torch.no_grad():  # text without the tags: the same ids, the same logits over the old vocabulary
        after = reloaded(**_batch(reprocessor, synthetic_data)).logits
    torch.testing.assert_close(after[..., :before.shape[-1]], before)


def test_the_cold_start_sft_adds_the_tags_and_trains_them(tiny_model_dir, subset_dir, tmp_path):
    """``sc_tag_tokens``: the saved model's tags are single tokens, and training makes them likelier after o1."""
    import dataclasses
    import shutil

    from sherlock.data.llava_cot import DATA_FILE, load_data, write_llava_cot
    from sherlock.stages.sft import SFTStageConfig, run_sft

    shutil.copytree(subset_dir, tmp_path / "cold")
    records = [dataclasses.replace(r, response=f"{r.response}{SEP}{r.response}") for r in load_data(subset_dir).records]
    write_llava_cot(records, tmp_path / "cold" / DATA_FILE)
    out = run_sft(SFTStageConfig(model=str(tiny_model_dir), data=str(tmp_path / "cold"), output=str(tmp_path / "sft"),
                                 sc_tag_tokens=True, max_steps=6, batch_size=8, learning_rate=3e-3, logging_steps=1))
    def tag_probability(model, processor) -> float:
        ids = processor.tokenizer.convert_tokens_to_ids(list(TAGS))
        batch = _batch(processor, load_data(tmp_path / "cold"))
        position = (batch["input_ids"][0] == ids[0]).nonzero().flatten()[-1]
        with torch.no_grad():
            return model(**batch).logits[0, position - 1].softmax(-1)[ids[0]].item()

    start, start_processor = load_vlm(tiny_model_dir, dtype=torch.float32)
    add_tokens(start, start_processor, TAGS)
    trained, processor = load_vlm(out, dtype=torch.float32)
    assert len(processor.tokenizer(SC_OPEN, add_special_tokens=False).input_ids) == 1
    # a random tiny model in six steps: the tag's probability after o1 up by half (1.1e-3 -> 1.8e-3)
    assert tag_probability(trained, processor) > 1.3 * tag_probability(start, start_processor)
