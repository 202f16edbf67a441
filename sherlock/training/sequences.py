"""The 10-sequence layout of a preference batch (slots: :mod:`sherlock.losses`): the sequences of a pair,
their tokenised data set and the collator that pads a batch of pairs into one model batch.

Only suffix tokens (and the end-of-turn token) are labelled. The processor's per-token outputs (Mllama's
``cross_attention_mask``, Gemma 3's ``token_type_ids``: ``sherlock.models.families``) continue through
the suffix as the prompt's last token does; the image inputs travel with their pair. Identical sequences
(offline pairs share their prefix, so 2 of every 4 correction sequences repeat) appear once in a batch;
each row names its context (prompt + prefix), which :mod:`sherlock.training.packing` runs once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from sherlock.chat import prompt_turns
from sherlock.data.preferences import PreferencePair
from sherlock.data.schema import open_image
from sherlock.losses import DPO_SEQUENCES, NUM_SEQUENCES
from sherlock.models.families import TOKEN_KEYS
from sherlock.prompts import correction_prompt
from sherlock.training.setup import IGNORE_INDEX

# the batch keys that are not model inputs
LAYOUT_KEYS = ("slots", "index", "truncation_step", "noise_level", "labels", "context", "label_start")
# Qwen's image inputs: patch rows of all a batch's images, concatenated, each image's (t, h, w) grid here
PATCH_GRID = "image_grid_thw"


def image_inputs_of_rows(batch: dict, rows: torch.Tensor) -> dict:
    """The image inputs of the batch rows ``rows`` (one image each), in that order: rows of a batch
    dimension selected, or, for patch rows (:data:`PATCH_GRID`), each row's patches cut out by its grid and
    regrouped in the order of ``rows`` (never stacked per sequence: TRL #2660).
    """
    keys = [k for k in batch if k not in (*LAYOUT_KEYS, "input_ids", "attention_mask", *TOKEN_KEYS)]
    if PATCH_GRID not in batch:
        return {k: batch[k].index_select(0, rows) for k in keys}
    grid = batch[PATCH_GRID]
    ends = grid.prod(-1).cumsum(0)
    patches = torch.cat([torch.arange(int(ends[r]) - int(grid[r].prod()), int(ends[r]), device=grid.device)
                         for r in rows.tolist()])
    return {k: batch[k].index_select(0, rows) if k == PATCH_GRID else batch[k].index_select(0, patches)
            for k in keys}


def pair_sequences(pair: PreferencePair, num_slots: int = NUM_SEQUENCES) -> list[tuple[str, str, str]]:
    """The (prompt, prefix, suffix) triples of one pair in slot order: all 10, or the 2 of L_DPO. Each
    prompt is the last user turn, after the pair's context.
    """
    triples = [(pair.question, "", pair.chosen), (pair.question, "", pair.rejected)]
    if num_slots == DPO_SEQUENCES:
        return triples
    for context in (correction_prompt(pair.question, pair.rejected), correction_prompt(pair.question, pair.chosen)):
        triples += [
            (context, pair.prefix_w, pair.suffix_w),
            (context, pair.prefix_l, pair.suffix_l),
            (context, pair.prefix_l, pair.suffix_w),
            (context, pair.prefix_w, pair.suffix_l),
        ]
    return triples


def sequence_extent(pairs: list[PreferencePair], processor, num_slots: int = NUM_SEQUENCES) -> tuple[int, int]:
    """(most unique sequences of one pair, tokens of the longest sequence): what a micro-batch of one
    pair runs at most, for the memory plan (:mod:`sherlock.training.memory`).
    """
    unique = [list(dict.fromkeys(pair_sequences(pair, num_slots))) for pair in pairs]
    texts = [processor.apply_chat_template(prompt_turns(prompt, pair.context), add_generation_prompt=True)
             + prefix + suffix for pair, triples in zip(pairs, unique) for prompt, prefix, suffix in triples]
    tokens = processor.tokenizer(texts, add_special_tokens=False)["input_ids"]
    return max(len(triples) for triples in unique), max(len(ids) for ids in tokens) + 1  # + end of turn


class PreferenceDataset(Dataset):
    """Tokenised pairs: each item holds its unique sequences, the slot → sequence map and the image.

    ``num_slots``: 10 (the Sherlock layout) or 2 (chosen and rejected only, when L_SC is off).
    """

    def __init__(self, pairs: list[PreferencePair], image_root: str | Path, processor,
                 num_slots: int = NUM_SEQUENCES):
        if not pairs:
            raise ValueError("the preference data set is empty")
        if num_slots not in (NUM_SEQUENCES, DPO_SEQUENCES):
            raise ValueError(f"num_slots must be {NUM_SEQUENCES} or {DPO_SEQUENCES}, got {num_slots}")
        self.pairs, self.image_root, self.processor = pairs, Path(image_root), processor
        self.num_slots = num_slots
        self.end_of_turn = processor.tokenizer.eos_token

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        pair = self.pairs[index]
        triples = pair_sequences(pair, self.num_slots)
        unique = list(dict.fromkeys(triples))
        contexts = list(dict.fromkeys((prompt, prefix) for prompt, prefix, _ in unique))
        texts = [self.processor.apply_chat_template(prompt_turns(p, pair.context), add_generation_prompt=True)
                 + prefix for p, prefix in contexts]
        image = open_image(self.image_root, pair)
        encoded = [self.processor(images=[[image]], text=[text], return_tensors="pt") for text in texts]
        tokenizer = self.processor.tokenizer
        sequences = []
        for prompt, prefix, suffix in unique:
            position = contexts.index((prompt, prefix))
            context = encoded[position]
            context_ids = context["input_ids"][0]
            suffix_ids = torch.as_tensor(tokenizer(suffix + self.end_of_turn, add_special_tokens=False)["input_ids"])
            sequence = {"input_ids": torch.cat([context_ids, suffix_ids]), "label_start": len(context_ids),
                        "context": position}
            for key in TOKEN_KEYS:  # the suffix's tokens are text tokens, like the prompt's last one
                if key in context:
                    values = context[key][0]
                    sequence[key] = torch.cat([values, values[-1:].expand(len(suffix_ids), *values.shape[1:])])
            sequences.append(sequence)
        patch_rows = PATCH_GRID in encoded[0]  # already without a batch dimension
        image_inputs = {k: v if patch_rows else v[0] for k, v in encoded[0].items()
                        if k not in ("input_ids", "attention_mask", *TOKEN_KEYS)}
        return {
            "index": index,
            "sequences": sequences,
            "slots": [unique.index(t) for t in triples],
            "image_inputs": image_inputs,
            "truncation_step": pair.truncation_step,
            "noise_level": pair.noise_level,
        }


@dataclass
class PreferenceCollator:
    """Pads the unique sequences of a batch of pairs into one model batch (right padding). Each row
    also names its context (prompt + prefix: an id unique in the batch) and where its labels start.
    """

    pad_token_id: int

    def __call__(self, items: list[dict]) -> dict:
        """Pad the batch's sequences and keep each item's slot layout."""
        sequences, slots = [], []
        for item in items:
            slots.append([len(sequences) + s for s in item["slots"]])
            sequences += item["sequences"]
        owner_of = [i for i, item in enumerate(items) for _ in item["sequences"]]
        context_ids: dict[tuple[int, int], int] = {}
        contexts = [context_ids.setdefault((owner, s["context"]), len(context_ids))
                    for owner, s in zip(owner_of, sequences)]
        length = max(len(s["input_ids"]) for s in sequences)
        count = len(sequences)
        input_ids = torch.full((count, length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((count, length), dtype=torch.long)
        labels = torch.full((count, length), IGNORE_INDEX, dtype=torch.long)
        batch = {}
        for row, sequence in enumerate(sequences):
            ids = sequence["input_ids"]
            input_ids[row, : len(ids)] = ids
            attention_mask[row, : len(ids)] = 1
            labels[row, sequence["label_start"] : len(ids)] = ids[sequence["label_start"] :]
        for key in TOKEN_KEYS:
            if key in sequences[0]:
                first = sequences[0][key]
                padded = torch.zeros((count, length, *first.shape[1:]), dtype=first.dtype)
                for row, sequence in enumerate(sequences):
                    padded[row, : len(sequence["input_ids"])] = sequence[key]
                batch[key] = padded
        join = torch.cat if PATCH_GRID in items[0]["image_inputs"] else torch.stack  # patch rows: one after another
        for key in items[0]["image_inputs"]:
            batch[key] = join([items[owner]["image_inputs"][key] for owner in owner_of])
        batch.update(
            input_ids=input_ids,
            attention_mask=attention_mask,
            labels=labels,
            context=torch.tensor(contexts, dtype=torch.long),
            label_start=torch.tensor([s["label_start"] for s in sequences], dtype=torch.long),
            slots=torch.tensor(slots, dtype=torch.long),
            index=torch.tensor([item["index"] for item in items], dtype=torch.long),
            truncation_step=torch.tensor([item["truncation_step"] for item in items], dtype=torch.float32),
            noise_level=torch.tensor([item["noise_level"] for item in items], dtype=torch.float32),
        )
        return batch


def labelled_tokens(batch: dict) -> torch.Tensor:
    """Number of labelled (response) tokens of every sequence, in the (pairs, slots) layout."""
    return (batch["labels"][:, 1:] != IGNORE_INDEX).sum(-1)[batch["slots"]]
