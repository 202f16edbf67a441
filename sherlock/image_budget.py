"""The image token budget: how many pixels one image may keep, for the processors that resize an image to
a pixel budget rather than a fixed size (Qwen2.5-VL, Qwen3-VL: an image of P pixels becomes
P / (patch · merge)² tokens). No torch: the command line reads these settings before anything heavy.
"""

from __future__ import annotations

from dataclasses import dataclass

from sherlock.config import ConfigError, help_field


@dataclass(kw_only=True)
class ImageBudget:
    """``min_pixels`` / ``max_pixels`` of a pixel-budget image processor; unset, the checkpoint's own."""

    min_pixels: int | None = help_field(None, "fewest pixels an image is resized to (Qwen's min_pixels; "
                                              "unset: the checkpoint's processor's)")
    max_pixels: int | None = help_field(None, "most pixels an image is resized to, and so its most image tokens "
                                              "(Qwen's max_pixels; unset: the checkpoint's processor's)")

    def image_budget(self) -> dict[str, int]:
        """The processor keyword arguments of the fields that are set; refuses a budget that is not one."""
        budget = {name: value for name, value in (("min_pixels", self.min_pixels), ("max_pixels", self.max_pixels))
                  if value is not None}
        if any(value <= 0 for value in budget.values()):
            raise ConfigError(f"min_pixels and max_pixels must be positive, got {budget}")
        if len(budget) == 2 and budget["min_pixels"] > budget["max_pixels"]:
            raise ConfigError(f"min_pixels {budget['min_pixels']} exceeds max_pixels {budget['max_pixels']}")
        return budget
