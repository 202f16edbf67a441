import numpy as np
import pytest
from PIL import Image

from sherlock import perturb


@pytest.fixture()
def image():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8))


def _array(image):
    return np.asarray(image).astype(np.int64)


@pytest.mark.parametrize(
    "fn",
    [
        lambda im, s: perturb.gaussian_noise(im, 0.3, s),
        lambda im, s: perturb.gaussian_noise(im, 0.3, s, legacy_uint8=True),
        lambda im, s: perturb.random_noise_image(im, s),
        lambda im, s: perturb.colour_jitter(im, s),
        lambda im, s: perturb.stic_corruption(im, s)[0],
    ],
)
def test_perturbations_are_deterministic_and_keep_size(image, fn):
    a, b, c = fn(image, 7), fn(image, 7), fn(image, 8)
    assert a.size == image.size and a.mode == "RGB"
    assert np.array_equal(_array(a), _array(b))
    assert not np.array_equal(_array(a), _array(c))


def test_gaussian_noise_clips_in_float(image):
    noisy = _array(perturb.gaussian_noise(image, 1.0, seed=3))
    assert noisy.min() >= 0 and noisy.max() <= 255
    assert (noisy == 0).any() and (noisy == 255).any()  # strong noise saturates instead of wrapping
    assert np.array_equal(_array(perturb.gaussian_noise(image, 0.0, seed=3)), _array(image))


def test_noise_grows_with_level(image):
    base = _array(image)
    errors = [np.abs(_array(perturb.gaussian_noise(image, level, seed=1)) - base).mean() for level in (0.05, 0.2, 0.6)]
    assert errors[0] < errors[1] < errors[2]


def test_legacy_mode_reproduces_uint8_wraparound(image):
    level, seed = 0.25, 5
    noise = np.random.default_rng(seed).normal(0.0, 255.0 * level, size=_array(image).shape)
    # the authors' code: noise.astype(uint8) added in uint8; numpy wraps modulo 256
    expected = np.asarray(image, dtype=np.uint8) + np.trunc(noise).astype(np.int64).astype(np.uint8)
    legacy = np.asarray(perturb.gaussian_noise(image, level, seed, legacy_uint8=True))
    assert np.array_equal(legacy, expected)
    clipped = np.asarray(perturb.gaussian_noise(image, level, seed))
    assert not np.array_equal(legacy, clipped)


def test_noise_level_out_of_range(image):
    with pytest.raises(ValueError, match="noise_level"):
        perturb.gaussian_noise(image, 1.5, seed=0)


def test_downscale_loses_detail_but_keeps_size(image):
    small = perturb.downscale(image, shorter_side=4)
    assert small.size == image.size
    assert np.abs(_array(small) - _array(image)).mean() > 20
    assert perturb.downscale(image, shorter_side=24).size == image.size


def test_colour_jitter_shifts_colours(image):
    jittered = perturb.colour_jitter(image, seed=2)
    assert np.abs(_array(jittered) - _array(image)).mean() > 5
