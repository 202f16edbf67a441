"""Sherlock preference pairs (Stage II/III data) and how the rejected trajectory is drawn.

A pair stores the chosen and rejected responses split at truncation step i (``prefix_w``,
``suffix_w``, ``prefix_l``, ``suffix_l``), the step i, the noise level ε and the perturbation that
produced Y^l_{≥i}, and a reference to the **clean** image (training always uses it). Storing the
four parts avoids the released code's prefix duplication (spec §1, data-format caveat). A pair of a
follow-up question carries the earlier turns of its conversation (``context``): every sequence of
the pair is scored after them.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from sherlock.chat import Context
from sherlock.data.llava_cot import DEFAULT_MAX_BAD_FRACTION, BadLine, check_image, read_checked_jsonl
from sherlock.data.sampling import link_or_copy
from sherlock.data.schema import PAIRS_FILE, file_digest, without_empty_context, write_jsonl
from sherlock.perturb import gaussian_noise, random_noise_image
from sherlock.reasoning import NUM_TRUNCATION_STEPS, beta_weight

# The released code's scheme: k = randint(0, 2) keeps 0, 1 or 2 stages (i = k + 1); ε ~ U(0.15, 0.25)
# with Gaussian noise for k < 2, the image replaced by uniform noise (ε := 1) for k = 2.
RELEASED_STEPS = (1, 2, 3)
RELEASED_NOISE_RANGE = (0.15, 0.25)
# on-policy: the SUMMARY and CAPTION kept, the REASONING regenerated on the clean image (i = 3, ε = 0)
ON_POLICY_STEPS = (3,)
SCHEMES = ("paper", "released", "on-policy")


@dataclass(frozen=True)
class Perturbation:
    """How one rejected suffix is drawn: truncation step i, noise level ε, noise kind and seed."""

    truncation_step: int
    noise_level: float
    kind: str
    seed: int

    def apply(self, image: Image.Image, legacy_uint8: bool = False) -> Image.Image:
        """The perturbed image: uniform noise, Gaussian noise of level ε (Eq. 1), or the clean image."""
        if self.kind == "clean":
            return image
        if self.kind == "uniform":
            return random_noise_image(image, self.seed)
        return gaussian_noise(image, self.noise_level, self.seed, legacy_uint8)


def draw_perturbation(rng: random.Random, scheme: str = "paper", steps: tuple[int, ...] | None = None) -> Perturbation:
    """Draw (i, ε) for one item.

    ``paper``: i ~ U(steps) (default U{1..4}), ε ~ U(0, 1), clipped Gaussian noise (App. B.2).
    ``released``: i ~ U(steps ∩ {1, 2, 3}); ε ~ U(0.15, 0.25) with Gaussian noise for i < 3, the
    image replaced by uniform noise and ε = 1 for i = 3.
    ``on-policy``: i = 3 on the clean image (ε = 0): the model's own reasoning after a right SUMMARY and
    CAPTION (the offline step keeps only the wrong ones).
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    allowed = {"released": RELEASED_STEPS, "on-policy": ON_POLICY_STEPS}.get(
        scheme, tuple(range(1, NUM_TRUNCATION_STEPS + 1)))
    steps = tuple(steps or allowed)
    if not steps or not set(steps) <= set(allowed):
        raise ValueError(f"truncation steps {steps} not available in the {scheme} scheme (allowed {allowed})")
    step = rng.choice(steps)
    seed = rng.randrange(2**31)
    if scheme == "paper":
        return Perturbation(step, rng.random(), "gaussian", seed)
    if scheme == "on-policy":
        return Perturbation(step, 0.0, "clean", seed)
    if step == 3:
        return Perturbation(step, 1.0, "uniform", seed)
    return Perturbation(step, rng.uniform(*RELEASED_NOISE_RANGE), "gaussian", seed)


@dataclass(frozen=True)
class PreferencePair:
    """Y^w = prefix_w + suffix_w, Y^l = prefix_l + suffix_l, split at truncation step i."""

    id: str
    image: str
    question: str
    prefix_w: str
    suffix_w: str
    prefix_l: str
    suffix_l: str
    truncation_step: int
    noise_level: float
    perturbation: str = "gaussian"
    context: Context = ()

    @property
    def chosen(self) -> str:
        """Y^w: the shared prefix and the chosen suffix."""
        return self.prefix_w + self.suffix_w

    @property
    def rejected(self) -> str:
        """Y^l: the shared prefix and the rejected suffix."""
        return self.prefix_l + self.suffix_l

    @property
    def beta_weight(self) -> float:
        """w(i, n, ε) of Eq. 8; β = base · w."""
        return float(beta_weight(self.truncation_step, self.noise_level))


def write_pairs(pairs: list[PreferencePair], image_root: Path, output_dir: str | Path) -> Path:
    """Write ``output_dir/pairs.jsonl`` and link the clean images beside it.

    w(i, n, ε) is not stored: the trainer and the plots compute it from each pair's (i, ε) (Eq. 8).
    """
    output_dir = Path(output_dir)
    for pair in pairs:
        link_or_copy(Path(image_root) / pair.image, output_dir / pair.image)
    return write_jsonl((without_empty_context(dataclasses.asdict(pair)) for pair in pairs), output_dir / PAIRS_FILE)


PAIR_TEXT_FIELDS = ("id", "image", "question", "prefix_w", "suffix_w", "prefix_l", "suffix_l")


def read_pairs(directory: str | Path, max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION) -> list[PreferencePair]:
    """Read and check the pairs of a preference directory, as the data loader checks records.

    A line that is not UTF-8 JSON, lacks a field, has a field of the wrong type (texts strings,
    ``truncation_step`` an integer in 1..4, ``noise_level`` a number in [0, 1], ``context`` a list of
    [question, response] string pairs), repeats a pair id,
    or names an image outside the directory or one that does not decode is quarantined in
    ``pairs.quarantine.jsonl`` with its line number and reason; past ``max_bad_fraction`` (or with
    no pair) a :class:`DataQualityError`.
    """
    directory = Path(directory)
    path = directory / PAIRS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no preference pairs at {path}")
    images: dict[str, str | None] = {}
    seen: set[str] = set()

    def pair_of(row: object) -> list[PreferencePair]:
        if not isinstance(row, dict):
            raise BadLine("line is not a JSON object")
        if missing := sorted(set(PAIR_TEXT_FIELDS + ("truncation_step", "noise_level")) - set(row)):
            raise BadLine(f"missing field(s) {missing}")
        texts = PAIR_TEXT_FIELDS + ("perturbation",)
        if wrong := [key for key in texts if key in row and not isinstance(row[key], str)]:
            raise BadLine(f"field(s) {wrong} must be strings")
        step, noise = row["truncation_step"], row["noise_level"]
        if isinstance(step, bool) or not isinstance(step, int) or not 1 <= step <= NUM_TRUNCATION_STEPS:
            raise BadLine(f"truncation_step must be an integer in 1..{NUM_TRUNCATION_STEPS}, got {step!r}")
        if isinstance(noise, bool) or not isinstance(noise, int | float) or not 0 <= noise <= 1:
            raise BadLine(f"noise_level must be a number in [0, 1], got {noise!r}")
        context = row.get("context", [])
        if not isinstance(context, list) or not all(
                isinstance(turn, list) and len(turn) == 2 and all(isinstance(text, str) for text in turn)
                for turn in context):
            raise BadLine("context must be a list of [question, response] string pairs")
        if row["id"] in seen:
            raise BadLine(f"duplicate pair id {row['id']!r}")
        check_image(directory, row["image"], images)
        seen.add(row["id"])
        return [PreferencePair(**{key: row[key] for key in PAIR_TEXT_FIELDS + ("truncation_step", "perturbation")
                                  if key in row}, noise_level=float(noise),
                               context=tuple(tuple(turn) for turn in context))]

    return read_checked_jsonl(path, pair_of, directory / "pairs.quarantine.jsonl", max_bad_fraction,
                              "preference pairs")[0]


def pairs_digest(directory: str | Path) -> str:
    """sha256 of the pairs file: identifies the data a reference cache belongs to."""
    return file_digest(Path(directory) / PAIRS_FILE)
