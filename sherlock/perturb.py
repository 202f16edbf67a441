"""Visual perturbations: Sherlock's noisy images (Stage II/III) and STIC's corruptions.

Every function is deterministic given its ``seed`` and returns a new RGB image of the input's size.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageEnhance


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def gaussian_noise(image: Image.Image, noise_level: float, seed: int, legacy_uint8: bool = False) -> Image.Image:
    """Add per-pixel noise N(0, (255·ε)²) at noise level ε in [0, 1] (paper App. B.2).

    By default the sum is computed in float and clipped to [0, 255]. ``legacy_uint8=True``
    reproduces the authors' released code, which casts the noise to uint8 and adds in uint8, so
    values wrap around modulo 256 (each noise sample truncated toward zero, then taken mod 256).
    """
    if not 0.0 <= noise_level <= 1.0:
        raise ValueError(f"noise_level must be in [0, 1], got {noise_level}")
    pixels = _pixels(image)
    noise = np.random.default_rng(seed).normal(0.0, 255.0 * noise_level, size=pixels.shape)
    if legacy_uint8:
        noisy = (pixels.astype(np.int64) + np.trunc(noise).astype(np.int64)) % 256
    else:
        noisy = np.clip(np.rint(pixels.astype(np.float64) + noise), 0, 255)
    return Image.fromarray(noisy.astype(np.uint8))


def random_noise_image(image: Image.Image, seed: int) -> Image.Image:
    """Replace the image by uniform random RGB noise of the same size (released code, k = 2)."""
    width, height = image.size
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def downscale(image: Image.Image, shorter_side: int = 20) -> Image.Image:
    """STIC corruption: shrink so the shorter side is ``shorter_side`` pixels, then scale back up."""
    image = image.convert("RGB")
    width, height = image.size
    scale = shorter_side / min(width, height)
    small = image.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.BILINEAR)
    return small.resize((width, height), Image.BILINEAR)


def colour_jitter(image: Image.Image, seed: int, brightness: float = 0.5, hue: float = 0.3) -> Image.Image:
    """STIC corruption ``ColorJitter(brightness=0.5, hue=0.3)``.

    Brightness factor ~ U(1 − brightness, 1 + brightness); hue shifted by ~ U(−hue, hue) of a turn.
    """
    if not 0 <= hue <= 0.5:
        raise ValueError(f"hue must be in [0, 0.5], got {hue}")
    rng = np.random.default_rng(seed)
    factor = rng.uniform(max(0.0, 1 - brightness), 1 + brightness)
    shift = rng.uniform(-hue, hue)
    hsv = np.asarray(ImageEnhance.Brightness(image.convert("RGB")).enhance(factor).convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int64) + round(shift * 256)) % 256
    return Image.fromarray(hsv, mode="HSV").convert("RGB")


def stic_corruption(image: Image.Image, seed: int) -> tuple[Image.Image, str]:
    """STIC's corrupted image and its kind: downscale or colour jitter, 50/50 (spec §3, Stage 1)."""
    rng = np.random.default_rng(seed)
    if rng.random() < 0.5:
        return downscale(image), "downscale"
    return colour_jitter(image, seed=int(rng.integers(2**31))), "colour_jitter"
