"""Sherlock preference training: L_SC + α·L_DPO with a per-sample dynamic β (Eq. 6–8).

Built on ``transformers.Trainer`` (subclassed in :class:`SherlockTrainer`), not on TRL's
``DPOTrainer``: TRL 1.16 computes the DPO loss inline with one scalar ``self.beta``, its vision
collator keeps a prompt-only ``cross_attention_mask`` that breaks Mllama, it refuses
``precompute_ref_log_probs`` for vision data, and it has no way to express the 10-sequence layout.
The ``Trainer`` still gives everything around the loss: ``torchrun``/DeepSpeed, gradient
accumulation, checkpoints and resume, logging. The metric names follow TRL's DPO trainer.

Every pair becomes 10 sequences (spec §1, "How the code implements it"):

====  ==================  ===========  ==========
slot  prompt              prefix       suffix
====  ==================  ===========  ==========
0     x                   —            Y^w (all)
1     x                   —            Y^l (all)
2–5   R(Q, Y^l) + image   w, l, l, w   w, l, w, l
6–9   R(Q, Y^w) + image   w, l, l, w   w, l, w, l
====  ==================  ===========  ==========

Only suffix tokens (and the end-of-turn token) are labelled. The processor's per-token outputs (Mllama's
``cross_attention_mask``, Gemma 3's ``token_type_ids``: ``sherlock.models.families``) continue through
the suffix as the prompt's last token does; the image inputs travel with their pair. Identical sequences
(offline pairs share their prefix, so 2 of every 4 correction sequences repeat) are run once, and so is
each context (prompt + prefix): packed with the suffixes that continue it. Without L_SC (the "w/o L_SC"
ablation, plain DPO) only slots 0 and 1 are built. Reference log-probs come from a frozen copy of the
starting checkpoint, computed once per (model, data) and cached on disk.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.checkpoint import checkpoint
from torch.utils.data import Dataset
from transformers import Trainer
from transformers.models.gemma3.modeling_gemma3 import get_block_sequence_ids_for_mask
from trl.trainer.utils import selective_log_softmax

from sherlock import distributed
from sherlock.chat import prompt_turns
from sherlock.config import help_field
from sherlock.data.preferences import PreferencePair, pairs_digest
from sherlock.data.schema import file_digest, open_image
from sherlock.losses import (
    DEFAULT_ALPHA_DPO,
    PAPER_BETA_BASE,
    dpo_loss,
    dynamic_beta,
    self_correction_loss,
    sft_loss,
    sherlock_loss,
)
from sherlock.models.families import TOKEN_KEYS
from sherlock.prompts import correction_prompt
from sherlock.training.setup import IGNORE_INDEX, ConvertedCheckpointResume

NUM_SEQUENCES = 10
DPO_SEQUENCES = 2  # slots 0 and 1: all L_DPO needs
DPO_CHOSEN, DPO_REJECTED = 0, 1
# (r_sw_pw, r_sl_pl, r_sw_pl, r_sl_pw) slots under the contexts (R(Y^l), R(Y^w)), see self_correction_loss.
SC_SLOTS = ((2, 6), (3, 7), (4, 8), (5, 9))
REFERENCE_CACHE_VERSION = "2"  # bump when the sequence layout or tokenisation changes


def pair_sequences(pair: PreferencePair, num_slots: int = NUM_SEQUENCES) -> list[tuple[str, str, str]]:
    """The (prompt, prefix, suffix) triples of one pair in slot order: all 10, or the 2 of L_DPO. Each
    prompt is the last user turn, after the pair's context."""
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
    pair runs at most, for the memory plan (:mod:`sherlock.training.memory`)."""
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
        image_inputs = {k: v[0] for k, v in encoded[0].items() if k not in ("input_ids", "attention_mask", *TOKEN_KEYS)}
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
    also names its context (prompt + prefix: an id unique in the batch) and where its labels start."""

    pad_token_id: int

    def __call__(self, items: list[dict]) -> dict:
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
        for key in items[0]["image_inputs"]:
            batch[key] = torch.stack([items[owner]["image_inputs"][key] for owner in owner_of])
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


# the batch keys that are not model inputs
LAYOUT_KEYS = ("slots", "index", "truncation_step", "noise_level", "labels", "context", "label_start")


LENGTH_SPREAD = 1.3  # a length bucket's longest row is at most this times its shortest


def bucket_spread() -> float:
    """:data:`LENGTH_SPREAD`, or one bucket under torchrun: DDP and ZeRO-3 need every rank to make the
    same forward calls."""
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
    """log π of each label token from the last hidden states (the output projection and log-softmax)."""
    return selective_log_softmax(head(hidden), labels)


def labelled_logps(model, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log π(label) of each token, 0 where unlabelled; ``hidden[..., t, :]`` predicts ``labels[..., t]``.

    The logits are never kept for the backward pass: the output projection and log-softmax run under
    activation checkpointing, so a batch holds tokens × hidden activations there instead of tokens ×
    vocabulary."""
    head = getattr(model, "module", model).get_output_embeddings()  # through DDP / DeepSpeed wrappers
    inputs = (head, hidden, labels.clamp(min=0))
    token_logps = checkpoint(label_logps, *inputs, use_reentrant=False) if torch.is_grad_enabled() \
        else label_logps(*inputs)
    return token_logps.float() * (labels != IGNORE_INDEX)


PACKING_ATTENTION = ("sdpa", "eager")  # the attention implementations that take a 4-D mask


def packs_contexts(model) -> bool:
    """Whether :func:`sequence_logps` may pack each context with its suffixes (:func:`packed_logps`): the
    model's attention must take an arbitrary 4-D mask (SDPA, eager; FlashAttention 2 takes none)."""
    unwrapped = getattr(model, "module", model)
    return unwrapped.config.get_text_config()._attn_implementation in PACKING_ATTENTION


def full_row_logps(model, batch: dict) -> torch.Tensor:
    """Σ log π(labels) of every row from whole-row forward passes: rows in length buckets, each cut to
    its own longest row; under torchrun one pass over all rows."""
    lengths = batch["attention_mask"].sum(-1).tolist()
    per_sequence = [None] * len(lengths)
    for rows in length_buckets(lengths, bucket_spread()):
        width = max(lengths[row] for row in rows)
        index = torch.tensor(rows, device=batch["input_ids"].device)
        chunk = {k: v.index_select(0, index) for k, v in batch.items() if k not in LAYOUT_KEYS}
        for key in ("input_ids", "attention_mask", *TOKEN_KEYS):
            if key in chunk:
                chunk[key] = chunk[key][:, :width]
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


def packed_attention_mask(model, bucket: PackedBucket, token_type_ids: torch.Tensor | None):
    """The additive 4-D mask of packed rows: causal, a suffix sees its context and itself, never another
    suffix; an image's tokens see each other (Gemma 3's ``token_type_ids`` 1, in transformers' own image
    blocks); padding sees only itself. With sliding-window layers, the mask per layer type: the window
    counts positions, which the packing keeps."""
    index = torch.arange(bucket.valid.shape[1], device=bucket.valid.device)
    query, key = (slice(None), slice(None), None), (slice(None), None, slice(None))
    segment = bucket.segment
    allowed = (index[None, :, None] >= index[None, None, :]) & bucket.valid[key] \
        & ((segment[key] == 0) | (segment[key] == segment[query]))
    if token_type_ids is not None:
        block = get_block_sequence_ids_for_mask(token_type_ids)  # -1 for a text token
        allowed |= (block[query] == block[key]) & (block[key] >= 0)
    allowed |= index[:, None] == index[None, :]
    unwrapped = getattr(model, "module", model)
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
    for bucket in packed_buckets(batch):
        heads = bucket.source_row[:, 0]
        inputs = {k: v.index_select(0, heads) for k, v in batch.items()
                  if k not in (*LAYOUT_KEYS, "input_ids", "attention_mask", *TOKEN_KEYS)}
        for key in ("input_ids", *TOKEN_KEYS):
            if key in batch:
                inputs[key] = batch[key][bucket.source_row, bucket.source_column]
        inputs["attention_mask"] = packed_attention_mask(model, bucket, inputs.get("token_type_ids"))
        hidden = model(**inputs, position_ids=bucket.source_column, logits_to_keep=1,
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


def model_digest(model_dir: str | Path) -> str:
    """sha256 over a checkpoint's weight files (names and bytes)."""
    sha = hashlib.sha256()
    files = sorted(Path(model_dir).glob("*.safetensors")) or sorted(Path(model_dir).glob("*.bin"))
    if not files:
        raise FileNotFoundError(f"no weight files in {model_dir}")
    for path in files:
        sha.update(path.name.encode() + file_digest(path).encode())
    return sha.hexdigest()


def reference_cache_path(cache_dir: str | Path, reference_dir: str | Path, data_dir: str | Path,
                         num_slots: int = NUM_SEQUENCES) -> Path:
    """Cache file keyed by the reference model's digest, the pairs' digest and the layout (version, slots)."""
    key = hashlib.sha256(
        f"{model_digest(reference_dir)}:{pairs_digest(data_dir)}:{REFERENCE_CACHE_VERSION}:{num_slots}".encode()
    ).hexdigest()[:32]
    return Path(cache_dir) / f"reference-logps-{key}.pt"


@torch.no_grad()
def compute_reference_logps(model, dataset: PreferenceDataset, collator, batch_size: int = 8) -> torch.Tensor:
    """log π_ref of every pair's sequences, shape (pairs, slots), in data set order; under torchrun the
    batches are shared out over the ranks and every rank gets the whole table."""
    model.eval()
    def batch_logps(start: int) -> list[torch.Tensor]:
        batch = collator([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        logps = sequence_logps(model, {k: v.to(model.device) for k, v in batch.items()}).cpu()
        return list(logps)

    return torch.stack(distributed.map_batches(range(0, len(dataset), batch_size), batch_logps, "reference log-probs"))


def cached_reference_logps(path: Path, compute) -> torch.Tensor:
    """Load the cache at ``path`` or ``compute()`` it (every rank) and write it atomically (rank 0)."""
    if path.is_file():
        return torch.load(path)
    logps = compute()
    if distributed.is_main():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(logps, partial)
        os.replace(partial, path)
    return logps


@dataclass(kw_only=True)
class SherlockLossConfig:
    """Loss settings: β bases (Eq. 8), α, the dynamic-β switch, the term switches (ablations) and
    the weight λ of an SFT term on the preferred response (STIC, SCL; 0 for Sherlock).

    The one declaration of the loss fields: the training stage's config inherits them and the
    pipelines check their settings against it at compile time.
    """

    sc_beta: float = help_field(PAPER_BETA_BASE, "β base of L_SC (paper 0.25, released code 0.025)")
    dpo_beta: float = help_field(0.1, "β base of L_DPO")
    alpha: float = help_field(DEFAULT_ALPHA_DPO, "weight α of L_DPO")
    dynamic_beta: bool = help_field(True, "β(i, n, ε) per sample (false: static β ablation)")
    use_sc: bool = help_field(True, "include L_SC (false: w/o L_SC ablation)")
    use_dpo: bool = help_field(True, "include L_DPO (false: w/o L_DPO ablation)")
    sft_weight: float = help_field(0.0, "weight λ of an SFT term on the preferred response (STIC 1/1024, SCL 0.1)")
    sft_per_token: bool = help_field(False, "SFT term per token of the batch (TRL/ms-swift form) instead of summed")

    def loss(self) -> SherlockLossConfig:
        """The loss fields alone (of a config that inherits them)."""
        return SherlockLossConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(SherlockLossConfig)})


def labelled_tokens(batch: dict) -> torch.Tensor:
    """Number of labelled (response) tokens of every sequence, in the (pairs, slots) layout."""
    return (batch["labels"][:, 1:] != IGNORE_INDEX).sum(-1)[batch["slots"]]


def sherlock_objective(policy: torch.Tensor, reference: torch.Tensor, truncation_step: torch.Tensor,
                       noise_level: torch.Tensor, cfg: SherlockLossConfig, tokens: torch.Tensor | None = None):
    """Mean L = L_SC + α · (L_DPO + λ · L_SFT(y_w)) of a batch from its (pairs, slots) log-probs.

    λ = 0 is L_Sherlock (Eq. 7). With 2 slots (L_SC off) and α = 1 it is DPO with an SFT term:
    STIC stage 1 (static β = 0.1, λ = 1/1024 on the summed log-likelihood) and SCL (β = 0.1,
    λ = ``sft_beta`` per token; ``tokens``, the labelled-token counts, are needed then). L_SC is
    reported as 0 without its slots. Returns ``(loss, (r, β_SC, β_DPO, L_SC, L_DPO, L_SFT))`` with
    the per-pair parts for logging.
    """
    if cfg.sft_weight and cfg.sft_per_token and tokens is None:
        raise ValueError("the per-token SFT term needs the labelled-token counts")
    r = policy - reference
    beta_sc = dynamic_beta(truncation_step, noise_level, cfg.sc_beta, cfg.dynamic_beta).to(r)
    beta_dpo = dynamic_beta(truncation_step, noise_level, cfg.dpo_beta, cfg.dynamic_beta).to(r)
    dpo = dpo_loss(r[:, DPO_CHOSEN], r[:, DPO_REJECTED], beta_dpo)
    if r.shape[1] == DPO_SEQUENCES:
        if cfg.use_sc:
            raise ValueError("L_SC needs the 10-sequence layout; the batch has only chosen and rejected")
        sc = torch.zeros_like(dpo)
    else:
        sc = self_correction_loss(*(r[:, list(slots)] for slots in SC_SLOTS), beta_sc)
    per_token = cfg.sft_per_token and tokens is not None
    sft = sft_loss(policy[:, DPO_CHOSEN], tokens[:, DPO_CHOSEN] if per_token else None)
    loss = sherlock_loss(sc, dpo + cfg.sft_weight * sft if cfg.sft_weight else dpo, cfg.alpha, cfg.use_sc,
                         cfg.use_dpo).mean()
    return loss, (r, beta_sc, beta_dpo, sc, dpo, sft)


class SherlockTrainer(ConvertedCheckpointResume, Trainer):
    """``Trainer`` whose loss is :func:`sherlock_objective` (L_Sherlock over the 10-sequence layout, or
    DPO with an SFT term over 2) with cached reference log-probs."""

    def __init__(self, *args, reference_logps: torch.Tensor, loss_config: SherlockLossConfig, **kwargs):
        super().__init__(*args, **kwargs)
        self.reference_logps = reference_logps
        self.loss_config = loss_config
        self.model_accepts_loss_kwargs = False  # the loss is a per-pair mean; let Trainer scale accumulation
        self._metrics: dict[str, list[float]] = defaultdict(list)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        policy = sequence_logps(model, inputs)
        reference = self.reference_logps[inputs["index"].cpu()].to(policy.device)
        loss, parts = sherlock_objective(policy, reference, inputs["truncation_step"], inputs["noise_level"],
                                         self.loss_config, labelled_tokens(inputs))
        self._record(policy, *parts)
        return loss

    @torch.no_grad()
    def _record(self, policy, r, beta_sc, beta_dpo, sc, dpo, sft) -> None:
        chosen = beta_dpo * r[:, DPO_CHOSEN]
        rejected = beta_dpo * r[:, DPO_REJECTED]
        values = {
            "rewards/chosen": chosen.mean(),
            "rewards/rejected": rejected.mean(),
            "rewards/margins": (chosen - rejected).mean(),
            "rewards/accuracies": (chosen > rejected).float().mean(),
            "logps/chosen": policy[:, DPO_CHOSEN].mean(),
            "logps/rejected": policy[:, DPO_REJECTED].mean(),
            "loss/sc": sc.mean(),
            "loss/dpo": dpo.mean(),
            "loss/sft": sft.mean(),
            "beta/sc_mean": beta_sc.mean(),
            "beta/sc_min": beta_sc.min(),
            "beta/sc_max": beta_sc.max(),
            "beta/dpo_mean": beta_dpo.mean(),
        }
        if r.shape[1] == NUM_SEQUENCES:
            v_plus_u = beta_sc[:, None] * (r[:, [2, 6]] - r[:, [3, 7]] + r[:, [4, 8]] - r[:, [5, 9]])
            values |= {"sc/v1_plus_u1": v_plus_u[:, 0].mean(), "sc/v2_plus_u2": v_plus_u[:, 1].mean()}
        for name, value in values.items():
            self._metrics[name].append(float(value))

    def log(self, logs: dict, *args, **kwargs) -> None:
        """Add the averages of the recorded metrics since the last log (as TRL's trainers do)."""
        if self._metrics and "loss" in logs:
            logs = logs | {name: sum(v) / len(v) for name, v in self._metrics.items()}
            self._metrics.clear()
        super().log(logs, *args, **kwargs)
