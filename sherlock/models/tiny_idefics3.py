"""A tiny Idefics3 (the SmolVLM layout): a SigLIP tower whose patches, pixel-shuffled, enter the text as
image tokens between ``<fake_token_around_image>`` markers.

Built offline like the tiny Mllama: random weights, a Llama text model, a byte-level BPE tokenizer
trained on the project's corpus with Idefics3's image and end-of-utterance tokens, an Idefics3-style
chat template (``User:`` / ``Assistant:`` turns) whose assistant turn is wrapped in
``{% generation %}``, and the real ``Idefics3Processor`` and ``Idefics3ImageProcessorPil``. The
synthetic task's images are small, so an image is one global view (no splitting into sub-images).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessorPil, Idefics3Processor

from sherlock.data.synthetic import IMAGE_SIZE
from sherlock.models.tiny import TokenizerSpec, chat_template, save_tiny, train_tokenizer

PAD, BOS, END = "<|endoftext|>", "<|im_start|>", "<end_of_utterance>"
AROUND_IMAGE, IMAGE, GLOBAL_IMAGE = "<fake_token_around_image>", "<image>", "<global-img>"

CHAT_TEMPLATE = chat_template("message['role'] | capitalize + ':'", "<end_of_utterance>", "<image>", "Assistant:",
                              separator="\n")
IDEFICS3 = TokenizerSpec((PAD, BOS, END, AROUND_IMAGE, IMAGE, GLOBAL_IMAGE), BOS, END, PAD, CHAT_TEMPLATE)
PRESETS = {"tiny": {"text_hidden": 64, "text_layers": 2, "vision_hidden": 64, "vision_layers": 2, "patch_size": 12,
                    "scale_factor": 2}}


def build_tiny_idefics3(output_dir: str | Path, corpus: Iterable[str], preset: str = "tiny",
                        image_size: int = IMAGE_SIZE, vocab_size: int = 1024, seed: int = 0) -> Path:
    """Build a randomly initialised tiny Idefics3 + processor and ``save_pretrained`` them to ``output_dir``."""
    if preset not in PRESETS:
        raise ValueError(f"unknown idefics3 preset {preset!r}; choose from {sorted(PRESETS)}")
    dims = PRESETS[preset]
    side = image_size // dims["patch_size"]
    if image_size % dims["patch_size"] or side % dims["scale_factor"]:
        raise ValueError(f"image_size must be a multiple of the patch size {dims['patch_size']} times the "
                         f"scale factor {dims['scale_factor']}")
    tokenizer = train_tokenizer(corpus, vocab_size, IDEFICS3)
    image_processor = Idefics3ImageProcessorPil(size={"longest_edge": image_size},
                                                max_image_size={"longest_edge": image_size}, do_image_splitting=False)
    image_tokens = (side // dims["scale_factor"]) ** 2
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=image_tokens,
                                  chat_template=CHAT_TEMPLATE)
    ids = tokenizer.convert_tokens_to_ids
    text = {"model_type": "llama", "vocab_size": len(tokenizer), "hidden_size": dims["text_hidden"],
            "intermediate_size": 3 * dims["text_hidden"], "num_hidden_layers": dims["text_layers"],
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096,
            "bos_token_id": ids(BOS), "eos_token_id": ids(END), "pad_token_id": ids(PAD)}
    vision = {"hidden_size": dims["vision_hidden"], "intermediate_size": 2 * dims["vision_hidden"],
              "num_hidden_layers": dims["vision_layers"], "num_attention_heads": 4, "image_size": image_size,
              "patch_size": dims["patch_size"]}
    config = Idefics3Config(text_config=text, vision_config=vision, scale_factor=dims["scale_factor"],
                            image_token_id=ids(IMAGE), pad_token_id=ids(PAD))
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config)
    return save_tiny(model, processor, output_dir, ids(BOS), ids(END), ids(PAD))
