"""Tiny Qwen2.5-VL and Qwen3-VL: a ViT over 2×2-merged patches whose tokens enter the text between
``<|vision_start|>`` and ``<|vision_end|>``, at 3-D (temporal, height, width) rotary positions (M-RoPE).

What sets the family apart from the others: the processor gives ``pixel_values`` as rows of patches,
concatenated over a batch's images, with each image's patch grid in ``image_grid_thw``, and
``mm_token_type_ids`` (1 on an image token) from which the model computes its 3-D positions
(``get_rope_index``). Qwen2.5-VL's tower attends in windows with a few full-attention blocks; Qwen3-VL's
adds learned position embeddings and DeepStack (features of inner tower layers added to the first text
layers' hidden states at the image tokens).

Built offline like the tiny Mllama: random weights, a byte-level BPE tokenizer trained on the project's
corpus with Qwen's ChatML and vision tokens (no beginning-of-text token, as Qwen's own), a ChatML chat
template whose assistant turn is wrapped in ``{% generation %}``, and the real processors:
``Qwen2VLImageProcessor`` with the image token budget ``min_pixels``/``max_pixels`` of the image size
(one image is (size/patch)² patches, a quarter as many tokens), the family's video processor and
processor class.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)

from sherlock.data.synthetic import IMAGE_SIZE
from sherlock.models.tiny import TokenizerSpec, chat_template, save_tiny, train_tokenizer

PAD, START, END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END, IMAGE, VIDEO = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"

# ChatML, as Qwen's templates lay a turn out: the assistant turn including <|im_end|> is trainable.
CHAT_TEMPLATE = chat_template("'<|im_start|>' + message['role'] + '\n'", END, VISION_START + IMAGE + VISION_END,
                              "<|im_start|>assistant\n", separator="\n", bos=False)
QWEN = TokenizerSpec((PAD, START, END, VISION_START, VISION_END, IMAGE, VIDEO), None, END, PAD, CHAT_TEMPLATE,
                     {"image_token": IMAGE, "video_token": VIDEO, "vision_start_token": VISION_START,
                      "vision_end_token": VISION_END})
MERGE = 2  # spatial_merge_size: 2×2 patches make one image token
PRESETS = {"tiny": {"text_hidden": 64, "text_layers": 2, "head_dim": 16, "vision_hidden": 64, "vision_layers": 2,
                    "patch_size": 12}}
# the rotary frequencies of a 16-wide head (8 pairs) split over (temporal, height, width)
MROPE_SECTION = [2, 3, 3]
# a 16-wide head's rotary base: Qwen's 1e6 (for 128-wide heads over long contexts) would leave a tiny
# random model almost blind to where a token is, and so to the 3-D image positions
ROPE_THETA = 100.0


def _text_config(dims: dict, tokenizer) -> dict:
    ids = tokenizer.convert_tokens_to_ids
    return {"vocab_size": len(tokenizer), "hidden_size": dims["text_hidden"],
            "intermediate_size": 3 * dims["text_hidden"], "num_hidden_layers": dims["text_layers"],
            "num_attention_heads": dims["text_hidden"] // dims["head_dim"], "num_key_value_heads": 2,
            "head_dim": dims["head_dim"], "max_position_embeddings": 4096,
            "initializer_range": dims["text_hidden"] ** -0.5,
            "rope_parameters": {"rope_type": "default", "rope_theta": ROPE_THETA, "mrope_section": MROPE_SECTION},
            "bos_token_id": None, "eos_token_id": ids(END), "pad_token_id": ids(PAD), "tie_word_embeddings": True}


def _build(output_dir: str | Path, corpus: Iterable[str], preset: str, image_size: int, vocab_size: int, seed: int,
           family: str) -> Path:
    if preset not in PRESETS:
        raise ValueError(f"unknown {family} preset {preset!r}; choose from {sorted(PRESETS)}")
    dims = PRESETS[preset]
    if image_size % (dims["patch_size"] * MERGE):
        raise ValueError(f"image_size must be a multiple of the patch size {dims['patch_size']} times {MERGE}")
    tokenizer = train_tokenizer(corpus, vocab_size, QWEN)
    ids = tokenizer.convert_tokens_to_ids
    pixels = image_size * image_size
    image_processor = Qwen2VLImageProcessor(size={"shortest_edge": pixels, "longest_edge": pixels},
                                            patch_size=dims["patch_size"], merge_size=MERGE, temporal_patch_size=2)
    vision = {"depth": dims["vision_layers"], "hidden_size": dims["vision_hidden"],
              "intermediate_size": 2 * dims["vision_hidden"], "num_heads": 4, "patch_size": dims["patch_size"],
              "spatial_merge_size": MERGE, "temporal_patch_size": 2, "out_hidden_size": dims["text_hidden"],
              "initializer_range": dims["vision_hidden"] ** -0.5}
    tokens = {"image_token_id": ids(IMAGE), "video_token_id": ids(VIDEO), "vision_start_token_id": ids(VISION_START),
              "vision_end_token_id": ids(VISION_END)}
    side = image_size // dims["patch_size"]
    if family == "qwen2_5_vl":
        video_processor = Qwen2VLVideoProcessor(patch_size=dims["patch_size"], merge_size=MERGE)
        processor = Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                        video_processor=video_processor, chat_template=CHAT_TEMPLATE)
        # windows of 2×2 image tokens; the last block attends over the whole image
        vision |= {"window_size": 2 * MERGE * dims["patch_size"], "fullatt_block_indexes": [dims["vision_layers"] - 1]}
        config = Qwen2_5_VLConfig(text_config=_text_config(dims, tokenizer), vision_config=vision,
                                  initializer_range=dims["text_hidden"] ** -0.5, **tokens)
        model_class = Qwen2_5_VLForConditionalGeneration
    else:
        video_processor = Qwen3VLVideoProcessor(patch_size=dims["patch_size"], merge_size=MERGE)
        processor = Qwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                     video_processor=video_processor, chat_template=CHAT_TEMPLATE)
        # position embeddings on the image's own patch grid; DeepStack from the first tower layer
        vision |= {"num_position_embeddings": side * side, "deepstack_visual_indexes": [0]}
        text = _text_config(dims, tokenizer)
        text["rope_parameters"] |= {"mrope_interleaved": True}
        config = Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True,
                               initializer_range=dims["text_hidden"] ** -0.5, **tokens)
        model_class = Qwen3VLForConditionalGeneration
    torch.manual_seed(seed)
    model = model_class(config)
    return save_tiny(model, processor, output_dir, None, ids(END), ids(PAD))


def build_tiny_qwen2_5_vl(output_dir: str | Path, corpus: Iterable[str], preset: str = "tiny",
                          image_size: int = IMAGE_SIZE, vocab_size: int = 1024, seed: int = 0) -> Path:
    """Build a randomly initialised tiny Qwen2.5-VL + processor and ``save_pretrained`` them to ``output_dir``."""
    return _build(output_dir, corpus, preset, image_size, vocab_size, seed, "qwen2_5_vl")


def build_tiny_qwen3_vl(output_dir: str | Path, corpus: Iterable[str], preset: str = "tiny",
                        image_size: int = IMAGE_SIZE, vocab_size: int = 1024, seed: int = 0) -> Path:
    """Build a randomly initialised tiny Qwen3-VL + processor and ``save_pretrained`` them to ``output_dir``."""
    return _build(output_dir, corpus, preset, image_size, vocab_size, seed, "qwen3_vl")
