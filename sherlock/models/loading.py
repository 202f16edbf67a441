"""Load any Hugging Face VLM checkpoint by path with the Auto classes (offline)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from sherlock.config import ConfigError


class CheckpointNotFoundError(FileNotFoundError):
    """The path does not hold a saved model (no ``config.json``)."""


def require_checkpoint(path: str | Path) -> Path:
    """``path`` as a Path; raises :class:`CheckpointNotFoundError` unless it holds a ``config.json``."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise CheckpointNotFoundError(f"no model checkpoint at {path} (config.json missing)")
    return path


def attend_across_images(model) -> int:
    """Make Mllama's attention to the image non-causal whatever mask a caller passes, and return how many
    modules were set.

    transformers 5.23 never sets ``is_causal`` on ``MllamaTextCrossAttention`` or ``MllamaVisionAttention``,
    and its SDPA path takes a module without the flag as causal when no mask is passed: text tokens would
    then see only the first image patches (huggingface/transformers#48172). Every path of the project
    passes the processor's ``cross_attention_mask``; this sets ``is_causal = False`` on exactly those
    modules where transformers left it unset, so no result depends on that. Other families: nothing.
    """
    from transformers.models.mllama.modeling_mllama import MllamaTextCrossAttention, MllamaVisionAttention

    unset = (module for module in model.modules() if not hasattr(module, "is_causal"))
    modules = [module for module in unset if isinstance(module, MllamaTextCrossAttention | MllamaVisionAttention)]
    for module in modules:
        module.is_causal = False
    return len(modules)


def load_processor(path: str | Path, image_budget: dict[str, int] | None = None):
    """The checkpoint's processor, with the image token budget ``image_budget`` (``min_pixels`` /
    ``max_pixels``: :class:`sherlock.image_budget.ImageBudget`) where one is given; a processor that
    sizes images otherwise (Mllama's tiles, Gemma 3's and Idefics3's fixed sizes) refuses one.
    """
    processor = AutoProcessor.from_pretrained(path, local_files_only=True, **(image_budget or {}))
    size = getattr(processor.image_processor, "size", None)
    edges = {"min_pixels": getattr(size, "shortest_edge", None), "max_pixels": getattr(size, "longest_edge", None)}
    if any(edges[name] != value for name, value in (image_budget or {}).items()):
        raise ConfigError(f"{type(processor.image_processor).__name__} of {path} takes no pixel budget: min_pixels "
                          "and max_pixels are for processors that resize to one (Qwen2.5-VL, Qwen3-VL)")
    return processor


def load_vlm(path: str | Path, dtype: torch.dtype | str = "auto", device: str | None = None,
             image_budget: dict[str, int] | None = None):
    """Load ``(model, processor)`` from a ``save_pretrained`` directory (the processor: :func:`load_processor`).

    Works for the tiny Mllama and for Llama-3.2-11B-Vision-Instruct alike; nothing is fetched
    from a hub (``local_files_only``).
    """
    path = require_checkpoint(path)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, local_files_only=True)
    attend_across_images(model)
    processor = load_processor(path, image_budget)
    if device is not None:
        model = model.to(device)
    return model, processor



def add_tokens(model, processor, tokens: tuple[str, ...]) -> list[int]:
    """Make each of ``tokens`` one token of ``processor``'s tokenizer and of ``model``; returns their ids.

    A new token's input and output embeddings start as the mean of those of the pieces its text was
    split into before (so it begins where the model already reads the string). The rows grow by
    appending: transformers' ``resize_token_embeddings`` sets the input embedding to the vocabulary
    size, which breaks a model whose input embedding has extra rows beyond it (Mllama: vocabulary + 8),
    and a model whose vocabulary already has spare rows (Qwen) needs none. A token the tokenizer already
    holds is left as it is.
    """
    from tokenizers import AddedToken

    tokenizer = processor.tokenizer
    new = [token for token in tokens if token not in tokenizer.get_vocab()]
    pieces = {token: tokenizer(token, add_special_tokens=False).input_ids for token in new}
    tokenizer.add_tokens([AddedToken(token, normalized=False, special=False) for token in new])
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    text = model.config.get_text_config()
    vocabulary = max(text.vocab_size, max(ids) + 1)
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = head is not None and head.weight is embed.weight
    extra = embed.num_embeddings - text.vocab_size
    with torch.no_grad():
        if embed.num_embeddings < vocabulary + extra:
            grown = torch.nn.Embedding(vocabulary + extra, embed.embedding_dim, padding_idx=embed.padding_idx,
                                       dtype=embed.weight.dtype, device=embed.weight.device)
            grown.weight[:embed.num_embeddings] = embed.weight
            model.set_input_embeddings(grown)
            embed = grown
        if tied:
            head.weight = embed.weight
        elif head is not None and head.out_features < vocabulary:
            grown = torch.nn.Linear(head.in_features, vocabulary, bias=head.bias is not None,
                                    dtype=head.weight.dtype, device=head.weight.device)
            grown.weight[:head.out_features] = head.weight
            if head.bias is not None:
                grown.bias.zero_()[:head.out_features] = head.bias
            model.set_output_embeddings(grown)
            head = grown
        for token in new:
            row, parts = tokenizer.convert_tokens_to_ids(token), pieces[token]
            embed.weight[row] = embed.weight[parts].mean(0)
            if head is not None and not tied:
                head.weight[row] = head.weight[parts].mean(0)
    for config in {id(c): c for c in (text, model.config)}.values():
        if hasattr(config, "vocab_size"):
            config.vocab_size = vocabulary
    return ids
