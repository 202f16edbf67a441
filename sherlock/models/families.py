"""The VLM families the stages run on: one record per family with the facts the stages need.

A family is named by its checkpoints' ``model_type``. What differs between families, and where it is
used:

- ``token_keys``: processor outputs aligned with ``input_ids`` besides the attention mask (Mllama's
  ``cross_attention_mask``, Gemma 3's ``token_type_ids``). The preference trainer continues a prompt
  with a response suffix, so these continue too, as the prompt's last token (a text token) does, are
  padded with the ids, and are cut with them to a length bucket (``sherlock.training.packing``).
  Every other processor output is an image input that travels with its pair.
- ``build``: the tiny instance built offline (``sherlock build-tiny --family NAME``).
- ``image_blocks``: where a family's image tokens attend to each other both ways (Gemma 3), the blocks
  they form; the packed preference batch's mask keeps them (``sherlock.training.packing``).
- ``positions``: where a family's rotary positions are not the token index (Qwen's M-RoPE: 3-D, from the
  image grid), the position ids of whole rows, which the packed preference batch gathers per token.

Qwen's image inputs are rows of patches concatenated over a batch's images, counted by ``image_grid_thw``
(``sherlock.training.sequences`` regroups them per sequence by rows); every other family's have a batch
dimension.

The log-probs of every family are taken from the last hidden states through the output embedding, as
each family's ``...ForConditionalGeneration.forward`` computes its logits (transformers 5.23 applies no
final soft-capping there, Gemma 3's included); ``tests/models/test_families.py`` holds every family to
its own forward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers.models.gemma3.modeling_gemma3 import get_block_sequence_ids_for_mask

from sherlock.models.tiny import build_tiny_vlm
from sherlock.models.tiny_gemma3 import build_tiny_gemma3
from sherlock.models.tiny_idefics3 import build_tiny_idefics3
from sherlock.models.tiny_qwen import build_tiny_qwen2_5_vl, build_tiny_qwen3_vl


@dataclass(frozen=True)
class Family:
    """A model family: its name, the token ids it needs, its tiny builder and its image-block mask."""
    name: str
    help: str
    token_keys: tuple[str, ...]
    build: Callable[..., Path]  # (output_dir, corpus, preset, image_size, vocab_size, seed) -> output_dir
    # model inputs -> (rows, tokens) ids of the image blocks whose tokens see each other (-1 for text);
    # None: every token attends causally
    image_blocks: Callable[[dict], torch.Tensor] | None = None
    # (model, whole rows' inputs) -> (3, rows, tokens) position ids; None: a token's column is its position
    positions: Callable[[torch.nn.Module, dict], torch.Tensor] | None = None


def gemma3_image_blocks(inputs: dict) -> torch.Tensor:
    """Gemma 3's bidirectional image blocks, from ``token_type_ids`` (1: an image token) as its forward
    pass finds them (transformers' ``get_block_sequence_ids_for_mask``).
    """
    return get_block_sequence_ids_for_mask(inputs["token_type_ids"])


def mrope_positions(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    """Qwen's 3-D (temporal, height, width) positions of right-padded whole rows, as its forward pass
    computes them (``get_rope_index``: a text token advances all three, an image's tokens take their grid
    cell's row and column).
    """
    owner = next(module for module in model.modules() if hasattr(module, "get_rope_index"))
    return owner.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"],
                                image_grid_thw=inputs["image_grid_thw"], attention_mask=inputs["attention_mask"])[0]


FAMILIES = {family.name: family for family in (
    Family("mllama", "Llama-3.2-Vision: the text cross-attends to the image tiles", ("cross_attention_mask",),
           build_tiny_vlm),
    Family("gemma3", "Gemma 3: pooled SigLIP image tokens in the sequence", ("token_type_ids",), build_tiny_gemma3,
           gemma3_image_blocks),
    Family("idefics3", "Idefics3 / SmolVLM: pixel-shuffled SigLIP image tokens in the sequence", (),
           build_tiny_idefics3),
    Family("qwen2_5_vl", "Qwen2.5-VL: merged ViT patch tokens at 3-D rotary positions (M-RoPE)",
           ("mm_token_type_ids",), build_tiny_qwen2_5_vl, positions=mrope_positions),
    Family("qwen3_vl", "Qwen3-VL: Qwen2.5-VL's layout with DeepStack visual features in the first text layers",
           ("mm_token_type_ids",), build_tiny_qwen3_vl, positions=mrope_positions),
)}
TOKEN_KEYS = tuple(dict.fromkeys(key for family in FAMILIES.values() for key in family.token_keys))


def family(name: str) -> Family:
    """The family ``name`` of :data:`FAMILIES`; an unknown name is a ``ValueError``."""
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; the families are {sorted(FAMILIES)}")
    return FAMILIES[name]
