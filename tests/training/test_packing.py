"""Sequence log-probs of a preference batch on every model family (golden tests).

The preference trainer builds its batches itself (10 sequences per pair, prompts continued with
response suffixes, deduplicated, right-padded, run in length buckets, contexts packed with their
suffixes), which is where VLM preference trainers lose the image–sequence alignment (TRL #2660) or a
family's per-token inputs. Each test takes a tiny checkpoint of each family and compares that path with
the checkpoint's own forward pass on the processor's encoding of the whole text, one sequence at a time.
"""

import dataclasses

import pytest
import torch

from sherlock.chat import prompt_turns
from sherlock.data.preferences import read_pairs
from sherlock.data.schema import open_image
from sherlock.losses import NUM_SEQUENCES
from sherlock.models.families import FAMILIES, TOKEN_KEYS
from sherlock.models.loading import load_vlm
from sherlock.training.packing import full_row_logps, packed_logps, packs_contexts, sequence_logps
from sherlock.training.sequences import PreferenceCollator, PreferenceDataset, pair_sequences

# float32 on CPU; the batched path pads, buckets and projects through the head under its own kernel calls
TOLERANCE = {"rel": 1e-4, "abs": 1e-3}


def test_slot_logps_match_independent_forward_passes(tiny_model_dir, preference_dir):
    """Deduplicated, padded batch log-probs equal one unpadded forward per sequence (HF's own loss)."""
    model, processor = load_vlm(tiny_model_dir)
    model.eval()
    pairs = read_pairs(preference_dir)[:2]
    dataset = PreferenceDataset(pairs, preference_dir, processor)
    assert len(dataset[0]["sequences"]) < NUM_SEQUENCES, "offline pairs share prefixes: duplicates run once"
    batch = PreferenceCollator(processor.tokenizer.pad_token_id)([dataset[0], dataset[1]])
    with torch.no_grad():
        batched = sequence_logps(model, batch)
    for row, item in enumerate((dataset[0], dataset[1])):
        for slot, index in enumerate(item["slots"]):
            sequence = item["sequences"][index]
            ids = sequence["input_ids"][None]
            labels = ids.clone()
            labels[:, : sequence["label_start"]] = -100
            inputs = {k: v[None] for k, v in item["image_inputs"].items()}
            with torch.no_grad():
                out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels,
                            cross_attention_mask=sequence["cross_attention_mask"][None], **inputs)
            expected = -out.loss.item() * (labels[:, 1:] != -100).sum().item()
            assert batched[row, slot].item() == pytest.approx(expected, rel=1e-4, abs=1e-3)


def reference_logps(model, processor, pair, image, end_of_turn: str) -> list[float]:
    """log π(suffix + end of turn | prompt, prefix) of each of the pair's 10 sequences: the processor
    encodes the whole text (so its per-token outputs cover the suffix as it makes them), the model's own
    forward gives the logits."""
    values = []
    for prompt, prefix, suffix in pair_sequences(pair):
        context = processor.apply_chat_template(prompt_turns(prompt, pair.context), add_generation_prompt=True) + prefix
        context_ids = processor(images=[[image]], text=[context], return_tensors="pt")["input_ids"][0]
        whole = processor(images=[[image]], text=[context + suffix + end_of_turn], return_tensors="pt")
        suffix_ids = processor.tokenizer(suffix + end_of_turn, add_special_tokens=False)["input_ids"]
        assert whole["input_ids"][0].tolist() == context_ids.tolist() + suffix_ids, "suffix tokenised apart"
        with torch.no_grad():
            logits = model(**whole).logits[0, :-1].float()
        targets = whole["input_ids"][0, 1:]
        token_logps = torch.log_softmax(logits, -1).gather(-1, targets[:, None])[:, 0]
        values.append(token_logps[len(context_ids) - 1:].sum().item())
    return values


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family_model(request, family_model_dirs):
    model, processor = load_vlm(family_model_dirs[request.param], dtype=torch.float32)
    return request.param, model.eval(), processor


def test_the_batched_bucketed_padded_logps_equal_one_forward_per_sequence(family_model, preference_dir):
    """The second pair is a follow-up question: its sequences come after an earlier turn."""
    name, model, processor = family_model
    pairs = read_pairs(preference_dir)[:3]
    pairs[1] = dataclasses.replace(pairs[1], context=((pairs[0].question, pairs[0].chosen),))
    dataset = PreferenceDataset(pairs, preference_dir, processor)
    keys = set(dataset[0]["sequences"][0]) & set(TOKEN_KEYS)
    assert keys == set(FAMILIES[name].token_keys), "the family's per-token inputs travel with each sequence"
    batch = PreferenceCollator(processor.tokenizer.pad_token_id)([dataset[i] for i in range(3)])
    with torch.no_grad():
        batched = sequence_logps(model, batch)
    for row, pair in enumerate(pairs):
        expected = reference_logps(model, processor, pair, open_image(preference_dir, pair), dataset.end_of_turn)
        assert batched[row].tolist() == pytest.approx(expected, **TOLERANCE), (name, row)
    alone = reference_logps(model, processor, dataclasses.replace(pairs[1], context=()),
                            open_image(preference_dir, pairs[1]), dataset.end_of_turn)
    assert max(abs(a - b) for a, b in zip(alone, batched[1].tolist())) > 0.01, "the earlier turn reaches the model"


def test_each_sequence_sees_its_own_image(family_model, preference_dir):
    """Two pairs' images swapped: the batched log-probs change, and equal the reference with the swap."""
    name, model, processor = family_model
    pairs = read_pairs(preference_dir)[:2]
    dataset = PreferenceDataset(pairs, preference_dir, processor)
    items = [dataset[0], dataset[1]]
    collate = PreferenceCollator(processor.tokenizer.pad_token_id)
    swapped = [item | {"image_inputs": other["image_inputs"]} for item, other in zip(items, items[::-1])]
    with torch.no_grad():
        straight, crossed = sequence_logps(model, collate(items)), sequence_logps(model, collate(swapped))
    # summed log-probs of a random tiny model: the image moves them by tenths, float noise by ~1e-4
    assert (straight - crossed).abs().max() > 0.01, f"{name}: the image does not reach the log-probs"
    images = [open_image(preference_dir, pair) for pair in pairs]
    expected = reference_logps(model, processor, pairs[0], images[1], dataset.end_of_turn)
    assert crossed[0].tolist() == pytest.approx(expected, **TOLERANCE)


def _logps_and_gradients(model, batch, rows) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    logps = rows(model, batch)
    logps.sum().backward()
    gradients = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return logps.detach(), gradients


def test_packed_contexts_give_the_whole_rows_log_probs_and_gradients(family_model, preference_dir):
    """Each context (prompt + prefix) run once, packed with the suffixes that continue it: every row's
    log-prob and every parameter's gradient are those of whole-row forward passes."""
    name, model, processor = family_model
    dataset = PreferenceDataset(read_pairs(preference_dir)[:3], preference_dir, processor)
    batch = PreferenceCollator(processor.tokenizer.pad_token_id)([dataset[i] for i in range(3)])
    assert packs_contexts(model)
    assert len(set(batch["context"].tolist())) < len(batch["context"]), "the correction sequences share contexts"
    whole, whole_gradients = _logps_and_gradients(model, batch, full_row_logps)
    packed, packed_gradients = _logps_and_gradients(model, batch, packed_logps)
    assert packed.tolist() == pytest.approx(whole.tolist(), **TOLERANCE), name
    assert set(packed_gradients) == set(whole_gradients) and whole_gradients, name
    # float32: summation order differs, ~1e-5 relative; a key bias's gradient is 0 up to rounding (~1e-7)
    for parameter, gradient in whole_gradients.items():
        difference = (packed_gradients[parameter] - gradient).abs().max()
        assert difference <= 1e-4 * gradient.abs().max() + 1e-6, (name, parameter, float(difference))


def test_packing_holds_under_sliding_windows_and_checkpointing_and_yields_to_flash_attention(family_model_dirs,
                                                                                           preference_dir):
    """Packed rows keep each token's position, which Gemma 3's sliding window counts (a 32-token window,
    shorter than the rows), and are ordinary forward passes, which activation checkpointing recomputes
    (Mllama, training mode): the log-probs equal each sequence's own forward pass. An attention that
    takes no 4-D mask (FlashAttention 2) gets whole rows."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    directory = family_model_dirs["gemma3"]
    config = AutoConfig.from_pretrained(directory, local_files_only=True)
    config.text_config.sliding_window = 32
    windowed = AutoModelForImageTextToText.from_pretrained(directory, config=config, dtype=torch.float32,
                                                           local_files_only=True).eval()
    checkpointed = load_vlm(family_model_dirs["mllama"], dtype=torch.float32)[0].train()
    checkpointed.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for name, model in (("gemma3", windowed), ("mllama", checkpointed)):
        processor = load_vlm(family_model_dirs[name])[1]
        pairs = read_pairs(preference_dir)[:2]
        dataset = PreferenceDataset(pairs, preference_dir, processor)
        batch = PreferenceCollator(processor.tokenizer.pad_token_id)([dataset[0], dataset[1]])
        assert packs_contexts(model), name
        logps = sequence_logps(model, batch).detach()
        for row, pair in enumerate(pairs):
            expected = reference_logps(model, processor, pair, open_image(preference_dir, pair), dataset.end_of_turn)
            assert logps[row].tolist() == pytest.approx(expected, **TOLERANCE), name
    windowed.config.get_text_config()._attn_implementation = "flash_attention_2"  # not installed: the setting alone
    assert not packs_contexts(windowed)


@pytest.mark.parametrize("name", sorted(name for name, family in FAMILIES.items() if family.positions))
def test_mrope_families_need_their_3d_positions_and_their_patches_regrouped_by_row(name, family_model_dirs,
                                                                                   preference_dir, monkeypatch):
    """The two things Qwen's layout adds, each mutated: packed rows at 1-D positions (the column, as for
    every other family) lose the whole rows' log-probs; patches taken in batch order rather than each
    bucket's row order (the silent misalignment of TRL #2660) lose the one-forward-per-sequence reference."""
    from sherlock.training import packing
    from sherlock.training.sequences import image_inputs_of_rows

    model, processor = load_vlm(family_model_dirs[name], dtype=torch.float32)
    model.eval()
    pairs = read_pairs(preference_dir)[:3]
    dataset = PreferenceDataset(pairs, preference_dir, processor)
    batch = PreferenceCollator(processor.tokenizer.pad_token_id)([dataset[i] for i in range(3)])
    with torch.no_grad():
        whole = full_row_logps(model, batch)
        monkeypatch.setitem(FAMILIES, name, dataclasses.replace(FAMILIES[name], positions=None))
        flat = packed_logps(model, batch)
        monkeypatch.undo()
        assert packed_logps(model, batch).tolist() == pytest.approx(whole.tolist(), **TOLERANCE)
        assert flat.tolist() != pytest.approx(whole.tolist(), **TOLERANCE), f"{name}: 1-D positions pass"
        monkeypatch.setattr(packing, "image_inputs_of_rows",
                            lambda b, rows: image_inputs_of_rows(b, rows.sort().values))
        misaligned = sequence_logps(model, batch)
    reference = torch.tensor([reference_logps(model, processor, pair, open_image(preference_dir, pair),
                                              dataset.end_of_turn) for pair in pairs])
    assert misaligned.flatten().tolist() != pytest.approx(reference.flatten().tolist(), **TOLERANCE), \
        f"{name}: patches in batch order pass"
