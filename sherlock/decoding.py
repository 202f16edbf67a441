"""Decoding settings: what a stage or a request samples with (no torch: the command line reads them
before anything heavy is imported; :mod:`sherlock.generation` decodes with them).
"""

from __future__ import annotations

from dataclasses import dataclass

from sherlock.config import help_field
from sherlock.image_budget import ImageBudget


@dataclass
class DecodingConfig:
    """Decoding settings. ``temperature = 0`` is greedy decoding."""

    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    batch_size: int = 32
    seed: int = 0
    engine: str = "hf"  # or "vllm" (sherlock.models.engines)


@dataclass(kw_only=True)
class SamplingSettings(ImageBudget):
    """Decoding settings of a stage that samples responses (spec §1: T = 0.7), and its image token budget."""

    temperature: float = help_field(0.7, "sampling temperature (0: greedy)")
    top_p: float = help_field(1.0, "nucleus sampling threshold")
    max_new_tokens: int = help_field(512, "longest generated response")
    generation_batch_size: int = help_field(32, "prompts per generate call")
    engine: str = help_field("hf", "generation engine: hf (transformers) or vllm (vLLM installed and a CUDA GPU; "
                                   "Gemma 3, Idefics3 and Qwen checkpoints)")

    def decoding(self, seed: int) -> DecodingConfig:
        """The decoding settings of these fields with ``seed``."""
        return DecodingConfig(self.max_new_tokens, self.temperature, self.top_p, self.generation_batch_size, seed,
                              self.engine)
