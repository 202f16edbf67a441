"""A tiny Gemma 3: a SigLIP tower whose pooled patches enter the text as image tokens.

Unlike Mllama (cross-attention to the image), Gemma 3's image is ``mm_tokens_per_image`` soft tokens
in the sequence between ``<start_of_image>`` and ``<end_of_image>``, attended bidirectionally among
themselves (the processor's ``token_type_ids`` mark them). Built offline like the tiny Mllama: random
weights, a byte-level BPE tokenizer trained on the project's corpus with Gemma's turn tokens, a
Gemma-style chat template whose model turn is wrapped in ``{% generation %}``, and the real
``Gemma3Processor`` and ``Gemma3ImageProcessorPil``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessorPil, Gemma3Processor

from sherlock.data.synthetic import IMAGE_SIZE
from sherlock.models.tiny import TokenizerSpec, chat_template, save_tiny, train_tokenizer

PAD, EOS, BOS = "<pad>", "<eos>", "<bos>"
START_TURN, END_TURN = "<start_of_turn>", "<end_of_turn>"
BOI, EOI, IMAGE = "<start_of_image>", "<end_of_image>", "<image_soft_token>"

# Gemma layout (the assistant is the "model" role); the model turn including <end_of_turn> is trainable.
CHAT_TEMPLATE = chat_template(
    "'<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\n'", END_TURN, BOI,
    "<start_of_turn>model\n", separator="\n")
GEMMA3 = TokenizerSpec((PAD, EOS, BOS, START_TURN, END_TURN, BOI, EOI, IMAGE), BOS, END_TURN, PAD, CHAT_TEMPLATE,
                       {"boi_token": BOI, "eoi_token": EOI, "image_token": IMAGE})
PRESETS = {"tiny": {"text_hidden": 64, "text_layers": 2, "vision_hidden": 64, "vision_layers": 2, "patch_size": 12,
                    "image_tokens": 9}}


def initialise_from_scratch(model: Gemma3ForConditionalGeneration) -> None:
    """Give the image a way in: Gemma 3 initialises its projection from the vision tower to the text at
    zero (a pretrained tower added to a pretrained text model), which leaves a model trained from scratch
    blind (every image the same zero tokens, no gradient into the tower). It is drawn like a linear layer's
    weights instead (std 1/sqrt(vision width)).
    """
    projection = model.model.multi_modal_projector.mm_input_projection_weight
    with torch.no_grad():
        projection.normal_(0.0, projection.shape[0] ** -0.5)


def build_tiny_gemma3(output_dir: str | Path, corpus: Iterable[str], preset: str = "tiny", image_size: int = IMAGE_SIZE,
                      vocab_size: int = 1024, seed: int = 0) -> Path:
    """Build a randomly initialised tiny Gemma 3 + processor and ``save_pretrained`` them to ``output_dir``."""
    if preset not in PRESETS:
        raise ValueError(f"unknown gemma3 preset {preset!r}; choose from {sorted(PRESETS)}")
    dims = PRESETS[preset]
    if image_size % dims["patch_size"]:
        raise ValueError(f"image_size must be a multiple of the patch size {dims['patch_size']}")
    tokenizer = train_tokenizer(corpus, vocab_size, GEMMA3)
    image_processor = Gemma3ImageProcessorPil(size={"height": image_size, "width": image_size}, do_pan_and_scan=False)
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE,
                                image_seq_length=dims["image_tokens"])
    ids = tokenizer.convert_tokens_to_ids
    text = {"vocab_size": len(tokenizer), "hidden_size": dims["text_hidden"],
            "intermediate_size": 3 * dims["text_hidden"], "num_hidden_layers": dims["text_layers"],
            "num_attention_heads": 4, "num_key_value_heads": 2,
            "head_dim": dims["text_hidden"] // 4, "max_position_embeddings": 4096, "sliding_window": 4096,
            "bos_token_id": ids(BOS), "eos_token_id": [ids(END_TURN), ids(EOS)],
            "pad_token_id": ids(PAD)}
    vision = {"hidden_size": dims["vision_hidden"], "intermediate_size": 2 * dims["vision_hidden"],
              "num_hidden_layers": dims["vision_layers"], "num_attention_heads": 4, "image_size": image_size,
              "patch_size": dims["patch_size"]}
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=dims["image_tokens"],
                          image_token_id=ids(IMAGE), boi_token_id=ids(BOI), eoi_token_id=ids(EOI))
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config)
    initialise_from_scratch(model)
    return save_tiny(model, processor, output_dir, ids(BOS), [ids(END_TURN), ids(EOS)], ids(PAD))
