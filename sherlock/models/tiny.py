"""A tiny Llama-3.2-Vision (Mllama) with a tokenizer trained on the project's corpus.

The production model is Llama-3.2-11B-Vision-Instruct; this builds the same architecture with tiny
dimensions and random weights, a byte-level BPE tokenizer with the Llama-3 special tokens and the
four stage tags as atomic tokens, a Llama-3-style chat template whose assistant turn is wrapped in
``{% generation %}`` (for TRL's ``assistant_only_loss``), and an ``MllamaProcessor``. It is saved
with ``save_pretrained`` so every stage loads it like any other checkpoint. Nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    MllamaConfig,
    MllamaForConditionalGeneration,
    MllamaImageProcessorPil,
    MllamaProcessor,
    PreTrainedTokenizerFast,
)

from sherlock.data.schema import Record
from sherlock.data.synthetic import IMAGE_SIZE
from sherlock.prompts import SHERLOCK_CORRECTION_TEMPLATE
from sherlock.reasoning import STAGES

BOS, EOS, EOT = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"
START_HEADER, END_HEADER = "<|start_header_id|>", "<|end_header_id|>"
IMAGE, PAD = "<|image|>", "<|finetune_right_pad_id|>"
SPECIAL_TOKENS = [BOS, EOS, START_HEADER, END_HEADER, EOT, IMAGE, PAD]
STAGE_TAGS = [tag for stage in STAGES for tag in (f"<{stage}>", f"</{stage}>")]

def chat_template(header: str, end_of_turn: str, image: str, generation_prompt: str, separator: str = "",
                  bos: bool = True) -> str:
    """A chat template in the layout every tiny family shares: ``bos_token`` (where ``bos``), then each message opened
    by ``header`` (a Jinja expression of ``message``), a user turn's images as ``image``, every turn
    closed by ``end_of_turn`` + ``separator``; an assistant turn's text and its ``end_of_turn`` are
    wrapped in ``{% generation %}`` (the trainable span of assistant-only loss).
    """
    return (
        ("{{- bos_token }}" if bos else "") +
        "{%- for message in messages %}"
        f"{{{{- {header} }}}}"
        "{%- if message['role'] == 'assistant' %}{% generation %}"
        "{%- if message['content'] is string %}{{- message['content'] }}"
        "{%- else %}{%- for part in message['content'] %}{%- if part['type'] == 'text' %}{{- part['text'] }}"
        "{%- endif %}{%- endfor %}{%- endif %}"
        f"{{{{- '{end_of_turn}' }}}}{{% endgeneration %}}" + (f"{{{{- '{separator}' }}}}" if separator else "") +
        "{%- else %}"
        "{%- if message['content'] is string %}{{- message['content'] }}"
        "{%- else %}{%- for part in message['content'] %}"
        f"{{%- if part['type'] == 'image' %}}{{{{- '{image}' }}}}"
        "{%- elif part['type'] == 'text' %}{{- part['text'] }}{%- endif %}"
        "{%- endfor %}{%- endif %}"
        f"{{{{- '{end_of_turn}{separator}' }}}}"
        "{%- endif %}"
        "{%- endfor %}"
        f"{{%- if add_generation_prompt %}}{{{{- '{generation_prompt}' }}}}{{%- endif %}}"
    )


# Llama-3 layout; the assistant turn including <|eot_id|> is the generation (trainable) span.
CHAT_TEMPLATE = chat_template("'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'", "<|eot_id|>",
                              "<|image|>", "<|start_header_id|>assistant<|end_header_id|>\n\n")


@dataclass(frozen=True)
class TinyPreset:
    """Dimensions of a tiny Mllama. Cross-attention layers count inside ``text_layers``."""

    text_hidden: int
    text_layers: int
    cross_attention_layers: tuple[int, ...]
    text_heads: int
    text_kv_heads: int
    text_intermediate: int
    vision_hidden: int
    vision_layers: int
    vision_global_layers: int
    vision_heads: int
    vision_intermediate: int
    intermediate_layers_indices: tuple[int, ...]
    patch_size: int = 24  # 3 x 3 patches on the default 72-px image: one per grid cell


CROSS_ATTENTION_GATE = 1.0

PRESETS = {
    "tiny": TinyPreset(64, 4, (1, 3), 4, 2, 192, 64, 2, 1, 4, 128, (1,)),
    "small": TinyPreset(128, 6, (2, 5), 4, 2, 384, 128, 3, 1, 4, 256, (1, 2)),
    # the embedded default: 12-px patches (4 per grid cell); a 128-wide text model whose 4 self-attention
    # layers (cross-attention at 1 and 4) can copy from the prompt
    "embedded": TinyPreset(128, 6, (1, 4), 4, 2, 512, 64, 2, 1, 4, 256, (1,), patch_size=12),
}


def tokenizer_corpus(records: Iterable[Record]) -> list[str]:
    """Texts a tiny tokenizer learns from: each record's question and response, and R(Q, E)."""
    return [f"{r.question}\n{r.response}" for r in records] + [SHERLOCK_CORRECTION_TEMPLATE]


@dataclass(frozen=True)
class TokenizerSpec:
    """A family's special tokens and chat template, for a tokenizer trained on the project's corpus.

    ``eos`` ends an assistant turn (generation stops there); ``extra`` names the tokens a family's
    processor reads from its tokenizer (Gemma 3: ``image_token``, ``boi_token``, ``eoi_token``).
    """

    special_tokens: tuple[str, ...]
    bos: str | None  # None: the family has no beginning-of-text token (Qwen)
    eos: str
    pad: str
    chat_template: str
    extra: dict[str, str] = field(default_factory=dict)


LLAMA3 = TokenizerSpec(tuple(SPECIAL_TOKENS), BOS, EOT, PAD, CHAT_TEMPLATE)


def train_tokenizer(corpus: Iterable[str], vocab_size: int = 1024,
                    spec: TokenizerSpec = LLAMA3) -> PreTrainedTokenizerFast:
    """Byte-level BPE on ``corpus`` with the family's special tokens (Llama-3 by default) and atomic stage tags."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(spec.special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=spec.bos,
        eos_token=spec.eos,
        pad_token=spec.pad,
        padding_side="left",
        model_max_length=4096,
        chat_template=spec.chat_template,
        **({"extra_special_tokens": spec.extra} if spec.extra else {}),
    )
    fast.add_tokens(STAGE_TAGS)  # atomic but not special: decoding keeps them
    return fast


def build_processor(tokenizer: PreTrainedTokenizerFast, image_size: int) -> MllamaProcessor:
    """The Mllama processor of a tiny model: one tile of ``image_size`` pixels."""
    image_processor = MllamaImageProcessorPil(size={"height": image_size, "width": image_size}, max_image_tiles=1)
    return MllamaProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)


def build_config(preset: TinyPreset, tokenizer: PreTrainedTokenizerFast, image_size: int) -> MllamaConfig:
    """The Mllama config of ``preset`` with the tokenizer's special token ids."""
    ids = tokenizer.convert_tokens_to_ids
    vision = {
        "hidden_size": preset.vision_hidden,
        "num_hidden_layers": preset.vision_layers,
        "num_global_layers": preset.vision_global_layers,
        "attention_heads": preset.vision_heads,
        "intermediate_size": preset.vision_intermediate,
        "vision_output_dim": preset.vision_hidden * (len(preset.intermediate_layers_indices) + 1),
        "image_size": image_size,
        "patch_size": preset.patch_size,
        "max_num_tiles": 1,
        "supported_aspect_ratios": [[1, 1]],
        "intermediate_layers_indices": list(preset.intermediate_layers_indices),
        "initializer_range": preset.vision_hidden**-0.5,
    }
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": preset.text_hidden,
        "num_hidden_layers": preset.text_layers,
        "cross_attention_layers": list(preset.cross_attention_layers),
        "num_attention_heads": preset.text_heads,
        "num_key_value_heads": preset.text_kv_heads,
        "intermediate_size": preset.text_intermediate,
        "max_position_embeddings": 4096,
        "bos_token_id": ids(BOS),
        "eos_token_id": [ids(EOT), ids(EOS)],
        "pad_token_id": ids(PAD),
        "initializer_range": preset.text_hidden**-0.5,
    }
    return MllamaConfig(vision_config=vision, text_config=text, image_token_index=ids(IMAGE))


def initialise_from_scratch(model: MllamaForConditionalGeneration, gate: float = CROSS_ATTENTION_GATE) -> None:
    """Undo the parts of Mllama's initialisation that assume pretrained towers.

    - The tanh gates of the text model's cross-attention layers and of the vision model's global
      layers are set to ``gate``. Mllama initialises them at (or near) 0, which suits adding vision
      to a pretrained language model but traps a model trained from scratch: with tanh(0) = 0 the
      gated weights get no gradient and the gate almost none, so the model ignores the image.
    - The patch position embedding is rescaled to the standard deviation of the patch embeddings
      of a typical image (a random conv output ~20× larger than its N(0, 1/width) positions), so
      *where* a patch is reaches the encoder as clearly as *what* it shows.
    """
    vision = model.model.vision_model
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("cross_attn_attn_gate", "cross_attn_mlp_gate", "gate_attn", "gate_ffn")):
                parameter.fill_(gate)
        pixels = torch.rand(1, 3, vision.patch_size * 3, vision.patch_size * 3) * 4 - 2  # normalised pixel range
        content = vision.patch_embedding(pixels).std()
        embedding = vision.gated_positional_embedding.embedding
        embedding.mul_(content / embedding.std())


def build_tiny_vlm(
    output_dir: str | Path,
    corpus: Iterable[str],
    preset: str = "tiny",
    image_size: int = IMAGE_SIZE,
    vocab_size: int = 1024,
    seed: int = 0,
) -> Path:
    """Build a randomly initialised tiny Mllama + processor and ``save_pretrained`` them to ``output_dir``."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    if image_size % PRESETS[preset].patch_size:
        raise ValueError(f"image_size must be a multiple of the patch size {PRESETS[preset].patch_size}")
    tokenizer = train_tokenizer(corpus, vocab_size)
    processor = build_processor(tokenizer, image_size)
    config = build_config(PRESETS[preset], tokenizer, image_size)
    torch.manual_seed(seed)
    model = MllamaForConditionalGeneration(config)
    initialise_from_scratch(model)
    text = config.text_config
    return save_tiny(model, processor, output_dir, text.bos_token_id, text.eos_token_id, text.pad_token_id)


def save_tiny(model, processor, output_dir: str | Path, bos_id: int, eos_id: int | list[int], pad_id: int) -> Path:
    """Give the generation config the tokenizer's special ids and ``save_pretrained`` model and processor."""
    model.generation_config.bos_token_id = bos_id
    model.generation_config.eos_token_id = eos_id
    model.generation_config.pad_token_id = pad_id
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    return output_dir
