"""Sequence log-probs of a preference batch: length buckets, each context packed with the suffixes that
continue it under a 4-D attention mask, or whole rows where the attention takes no such mask. Shared by
the trainer, the reference pass and bench P1.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint
from trl.trainer.utils import selective_log_softmax

from sherlock import distributed
from sherlock.models.families import FAMILIES, TOKEN_KEYS
from sherlock.training.sequences import image_inputs_of_rows
from sherlock.training.setup import IGNORE_INDEX

LENGTH_SPREAD = 1.3  # a length bucket's longest row is at most this times its shortest


def bucket_spread() -> float:
    """:data:`LENGTH_SPREAD`, or one bucket under torchrun: DDP and ZeRO-3 need every rank to make the
    same forward calls.
    """
    return math.inf if distributed.world_size() > 1 else LENGTH_SPREAD


def length_buckets(lengths: list[int], spread: float) -> list[list[int]]:
    """Row indices grouped by similar length (sorted; a new group when a row exceeds ``spread`` × the first)."""
    buckets: list[list[int]] = []
    for row in sorted(range(len(lengths)), key=lengths.__getitem__):
        if not buckets or lengths[row] > spread * lengths[buckets[-1][0]]:
            buckets.append([])
        buckets[-1].append(row)
    return buckets


def label_logps(head, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Log π of each label token from the last hidden states (the output projection and log-softmax)."""
    return selective_log_softmax(head(hidden), labels)


def labelled_logps(model, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Log π(label) of each token, 0 where unlabelled; ``hidden[..., t, :]`` predicts ``labels[..., t]``.

    The logits are never kept for the backward pass: the output projection and log-softmax run under
    activation checkpointing, so a batch holds tokens × hidden activations there instead of tokens ×
    vocabulary.
    """
    head = getattr(model, "module", model).get_output_embeddings()  # through DDP / DeepSpeed wrappers
    inputs = (head, hidden, labels.clamp(min=0))
    token_logps = checkpoint(label_logps, *inputs, use_reentrant=False) if torch.is_grad_enabled() \
        else label_logps(*inputs)
    return token_logps.float() * (labels != IGNORE_INDEX)


PACKING_ATTENTION = ("sdpa", "eager")  # the attention implementations that take a 4-D mask


def packs_contexts(model) -> bool:
    """Whether :func:`sequence_logps` may pack each context with its suffixes (:func:`packed_logps`): the
    model's attention must take an arbitrary 4-D mask (SDPA, eager; FlashAttention 2 takes none).
    """
    unwrapped = getattr(model, "module", model)
    return unwrapped.config.get_text_config()._attn_implementation in PACKING_ATTENTION


def full_row_logps(model, batch: dict) -> torch.Tensor:
    """Σ log π(labels) of every row from whole-row forward passes: rows in length buckets, each cut to
    its own longest row; under torchrun one pass over all rows.
    """
    lengths = batch["attention_mask"].sum(-1).tolist()
    per_sequence = [None] * len(lengths)
    for rows in length_buckets(lengths, bucket_spread()):
        width = max(lengths[row] for row in rows)
        index = torch.tensor(rows, device=batch["input_ids"].device)
        chunk = image_inputs_of_rows(batch, index)
        for key in ("input_ids", "attention_mask", *TOKEN_KEYS):
            if key in batch:
                chunk[key] = batch[key].index_select(0, index)[:, :width]
        hidden = model(**chunk, logits_to_keep=1, output_hidden_states=True).hidden_states[-1][:, :-1]
        labels = batch["labels"].index_select(0, index)[:, 1:width]
        for row, value in zip(rows, labelled_logps(model, hidden, labels).sum(-1)):
            per_sequence[row] = value
    return torch.stack(per_sequence)


@dataclass
class PackedBucket:
    """Packed rows: each holds one context followed by every suffix that continues it.

    Per packed token: where it comes from in the batch (``source_row``, ``source_column``, whose column is
    also its position), its segment (0 the context, j the j-th suffix) and whether it is padding. Per
    labelled token: the packed position whose hidden state predicts it and the batch row it counts for.
    """

    source_row: torch.Tensor  # (packed rows, width)
    source_column: torch.Tensor
    segment: torch.Tensor
    valid: torch.Tensor
    predictor: tuple[torch.Tensor, torch.Tensor]  # (packed row, packed position) of every labelled token
    label: tuple[torch.Tensor, torch.Tensor]  # (batch row, column) of every labelled token


def packed_buckets(batch: dict) -> list[PackedBucket]:
    """The batch's contexts, each packed with its suffixes, in length buckets (:func:`length_buckets`)."""
    lengths = batch["attention_mask"].sum(-1).tolist()
    starts = batch["label_start"].tolist()
    row_context = batch["context"].tolist()
    suffixes: dict[int, list[int]] = defaultdict(list)
    for row, context in enumerate(row_context):
        suffixes[context].append(row)
    packs = []
    for rows in suffixes.values():
        start = starts[rows[0]]
        tokens = [(rows[0], column, 0) for column in range(start)]
        predictors, labels = [], []
        for segment, row in enumerate(rows, 1):
            for column in range(start, lengths[row]):
                predictors.append(start - 1 if column == start else len(tokens) - 1)
                labels.append((row, column))
                tokens.append((row, column, segment))
        packs.append((tokens, predictors, labels))
    buckets = []
    for members in length_buckets([len(tokens) for tokens, _, _ in packs], bucket_spread()):
        width = max(len(packs[m][0]) for m in members)
        source = torch.zeros((3, len(members), width), dtype=torch.long)
        valid = torch.zeros((len(members), width), dtype=torch.bool)
        predictor_rows, predictor_positions, label_rows, label_columns = [], [], [], []
        for packed_row, member in enumerate(members):
            tokens, predictors, labels = packs[member]
            source[:, packed_row, : len(tokens)] = torch.tensor(tokens).T
            source[0, packed_row, len(tokens):] = tokens[0][0]
            valid[packed_row, : len(tokens)] = True
            predictor_rows += [packed_row] * len(predictors)
            predictor_positions += predictors
            label_rows += [row for row, _ in labels]
            label_columns += [column for _, column in labels]
        device = batch["input_ids"].device
        buckets.append(PackedBucket(*source.to(device), valid.to(device),
                                    (torch.tensor(predictor_rows, device=device),
                                     torch.tensor(predictor_positions, device=device)),
                                    (torch.tensor(label_rows, device=device),
                                     torch.tensor(label_columns, device=device))))
    return buckets


def packed_attention_mask(model, bucket: PackedBucket, inputs: dict):
    """The additive 4-D mask of packed rows: causal, a suffix sees its context and itself, never another
    suffix; an image's tokens see each other where the family says so (:attr:`Family.image_blocks`,
    Gemma 3); padding sees only itself. With sliding-window layers, the mask per layer type: the window
    counts positions, which the packing keeps.
    """
    index = torch.arange(bucket.valid.shape[1], device=bucket.valid.device)
    query, key = (slice(None), slice(None), None), (slice(None), None, slice(None))
    segment = bucket.segment
    allowed = (index[None, :, None] >= index[None, None, :]) & bucket.valid[key] \
        & ((segment[key] == 0) | (segment[key] == segment[query]))
    unwrapped = getattr(model, "module", model)
    family = FAMILIES.get(unwrapped.config.model_type)
    if family is not None and family.image_blocks is not None:
        block = family.image_blocks(inputs)  # -1 for a text token
        allowed |= (block[query] == block[key]) & (block[key] >= 0)
    allowed |= index[:, None] == index[None, :]
    dtype = unwrapped.dtype

    def additive(mask):
        blocked = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
        return blocked[:, None]

    text_config = unwrapped.config.get_text_config()
    if "sliding_attention" not in (getattr(text_config, "layer_types", None) or ()):
        return additive(allowed)
    position = bucket.source_column
    window = position[key] > position[query] - text_config.sliding_window
    return {"full_attention": additive(allowed), "sliding_attention": additive(allowed & window)}


def packed_logps(model, batch: dict) -> torch.Tensor:
    """Σ log π(labels) of every row, each context (prompt + prefix) run once, packed with its suffixes.

    The 4 correction sequences of a pair continue 2 contexts that quote a whole response (offline pairs:
    1 prefix, 2 suffixes each; the context is ~90 % of a row), so a packed row holds a context and then
    each suffix that continues it, every suffix at the positions it has in its own sequence
    (``position_ids``) and seeing only its context and itself (:func:`packed_attention_mask`). The first
    label token of a suffix is predicted by its context's last hidden state, the others by the suffix's
    own. One forward pass per bucket of packed rows, with no cache: DDP, ZeRO-3 and activation
    checkpointing see an ordinary forward pass.
    """
    per_sequence = torch.zeros(batch["input_ids"].shape[0], device=batch["input_ids"].device)
    family = FAMILIES.get(getattr(model, "module", model).config.model_type)
    row_positions = family.positions(model, batch) if family is not None and family.positions else None
    for bucket in packed_buckets(batch):
        inputs = image_inputs_of_rows(batch, bucket.source_row[:, 0])
        for key in ("input_ids", *TOKEN_KEYS):
            if key in batch:
                inputs[key] = batch[key][bucket.source_row, bucket.source_column]
        inputs["attention_mask"] = packed_attention_mask(model, bucket, inputs)
        # each token at its own row's position: the column, or the family's (M-RoPE: 3-D) position there
        positions = bucket.source_column if row_positions is None else \
            row_positions[:, bucket.source_row, bucket.source_column]
        hidden = model(**inputs, position_ids=positions, logits_to_keep=1,
                       output_hidden_states=True).hidden_states[-1]
        # the labelled tokens as one row: TRL's selective_log_softmax loops over the leading dimension
        labels = batch["labels"][bucket.label]
        token_logps = labelled_logps(model, hidden[bucket.predictor][None], labels[None])[0]
        per_sequence = per_sequence.index_add(0, bucket.label[0], token_logps)
    return per_sequence


def sequence_logps(model, batch: dict) -> torch.Tensor:
    """Summed log π(labelled tokens) of every sequence, gathered into the (pairs, slots) layout.

    Each context runs once, packed with the suffixes that continue it (:func:`packed_logps`), where the
    attention takes a 4-D mask (:func:`packs_contexts`); otherwise whole rows (:func:`full_row_logps`).
    Either runs in length buckets: direct sequences are much shorter than correction sequences (which
    quote a whole response), about 35 % of one batch padded to the longest was padding on the
    synthetic task.
    """
    rows = packed_logps(model, batch) if packs_contexts(model) else full_row_logps(model, batch)
    return rows[batch["slots"]]
