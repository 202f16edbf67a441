"""A procedurally drawn visual-reasoning task: the embedded default data set.

Each image is a 3x3 grid holding coloured shapes. Questions come in three difficulty tiers:

- ``easy``: one-step perception (count a colour, name the shape in a cell);
- ``medium``: multi-step counting (a union of two attributes, size + colour, a difference);
- ``hard``: spatial relations on scenes crowded with distractors that share the referenced
  shape's colour or kind (neighbour's colour, shapes sharing a row, above/below).

A diagnostic tier, ``lookup``, is drawn only when asked for (``tiers``): "which cell holds the
⟨colour⟩ ⟨kind⟩?" on crowded scenes, unique by construction. Answering it is a search over the
scene; checking an answer is one lookup (is that shape in that cell?): the family on which a
corrector could exploit a generation–verification gap (docs/results.md, "The lookup diagnostic").

Answers are LLaVA-CoT 4-stage responses: SUMMARY states the plan, CAPTION lists every shape
with its cell (perception), REASONING does the steps, CONCLUSION holds the answer. Questions are
open (a number or a word): with options A-D (``choice_fraction``) the tiny models answered at chance
while a blind prior read the answer off the options (docs/results.md, "Multiple choice removed"), so the
embedded task asks none; tokenizer corpora keep the form, which benchmarks use. Everything is deterministic by seed:
item ``k`` of seed ``s`` is the same however many items are drawn.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from sherlock.data.llava_cot import DATA_FILE, write_llava_cot
from sherlock.data.schema import Record

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 200, 30),
    "purple": (150, 50, 190),
}
KINDS = ("circle", "square", "triangle")
SIZES = ("small", "large")
ROWS = ("top", "middle", "bottom")
COLS = ("left", "middle", "right")
TIERS = ("easy", "medium", "hard")  # the task's tiers, drawn by default
DIAGNOSTIC_TIERS = ("lookup",)  # drawn only when named
TIER_SHAPES = {"easy": (2, 5), "medium": (3, 7), "hard": (5, 8), "lookup": (5, 8)}
CROWDED_TIERS = ("hard", "lookup")  # scenes with distractors sharing a colour or a kind
CHOICE_FRACTION = 0.0  # multiple-choice share of the embedded task (none; 0.3 in the archived runs)
TOKENIZER_CHOICE_FRACTION = 0.3  # tokenizer corpora (the committed base's too): option lists are a benchmark form
OPTION_LETTERS = "ABCD"
IMAGE_SIZE = 72  # a 3 x 3 grid of 24-px cells
SOURCE = "synthetic"  # the images' folder, and so the records' id namespace (sherlock.data.llava_cot)


def cell_name(row: int, col: int) -> str:
    """'top left' … 'center' … 'bottom right'."""
    if (row, col) == (1, 1):
        return "center"
    return f"{ROWS[row]} {COLS[col]}"


@dataclass(frozen=True)
class Shape:
    """One shape of a synthetic image: colour, kind, size and its grid cell."""
    colour: str
    kind: str
    size: str
    row: int
    col: int

    @property
    def name(self) -> str:
        """``size colour kind``, as questions and captions name it."""
        return f"{self.size} {self.colour} {self.kind}"

    @property
    def cell(self) -> str:
        """The name of the shape's grid cell."""
        return cell_name(self.row, self.col)


def _sample_scene(rng: random.Random, tier: str) -> list[Shape]:
    low, high = TIER_SHAPES[tier]
    cells = rng.sample([(r, c) for r in range(3) for c in range(3)], rng.randint(low, high))
    shapes = [Shape(rng.choice(list(COLOURS)), rng.choice(KINDS), rng.choice(SIZES), r, c) for r, c in cells]
    if tier in CROWDED_TIERS:  # distractors: shapes sharing the colour or the kind of another shape
        for i in range(1, len(shapes), 2):
            model = rng.choice(shapes[:i])
            shapes[i] = Shape(
                model.colour if rng.random() < 0.5 else shapes[i].colour,
                model.kind if rng.random() < 0.5 else shapes[i].kind,
                shapes[i].size,
                shapes[i].row,
                shapes[i].col,
            )
    return sorted(shapes, key=lambda s: (s.row, s.col))


def draw_scene(shapes: list[Shape], image_size: int, rng: random.Random) -> Image.Image:
    """Render shapes on a white canvas, each inside its grid cell with a little jitter."""
    image = Image.new("RGB", (image_size, image_size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    cell = image_size / 3
    for shape in shapes:
        half = cell * (0.42 if shape.size == "large" else 0.22)
        jitter = cell / 2 - half - 1
        cx = (shape.col + 0.5) * cell + rng.uniform(-jitter, jitter)
        cy = (shape.row + 0.5) * cell + rng.uniform(-jitter, jitter)
        box = (cx - half, cy - half, cx + half, cy + half)
        colour = COLOURS[shape.colour]
        if shape.kind == "circle":
            draw.ellipse(box, fill=colour)
        elif shape.kind == "square":
            draw.rectangle(box, fill=colour)
        else:
            draw.polygon([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)], fill=colour)
    return image


def caption(shapes: list[Shape]) -> str:
    """A caption listing every shape by cell."""
    listed = "; ".join(f"{s.cell}: a {s.name}" for s in shapes)  # cell first: then read the cell
    return f"The image shows {len(shapes)} shapes: {listed}."


def _listing(shapes: list[Shape]) -> str:
    return ", ".join(f"the {s.name} at {s.cell}" for s in shapes) if shapes else "none"


@dataclass(frozen=True)
class _Question:
    question: str
    summary: str
    reasoning: str
    answer: str  # a number or a word
    answer_type: str  # "number" or "text"


def _unique(shapes: list[Shape]) -> list[Shape]:
    """Shapes that colour + kind identify uniquely (so 'the red circle' is well defined)."""
    return [s for s in shapes if sum((o.colour, o.kind) == (s.colour, s.kind) for o in shapes) == 1]


def _count_colour(rng, shapes):
    colour = rng.choice(list(COLOURS))
    found = [s for s in shapes if s.colour == colour]
    return _Question(
        f"How many {colour} shapes are there?",
        f"I will find the {colour} shapes in the image and count them.",
        f"The {colour} shapes are: {_listing(found)}. That makes {len(found)}.",
        str(len(found)),
        "number",
    )


def _shape_at(rng, shapes):
    target = rng.choice(shapes)
    return _Question(
        f"What shape is at {target.cell}?",
        f"I will look at {target.cell} of the grid and name the shape there.",
        f"At {target.cell} there is a {target.name}. So the shape is a {target.kind}.",
        target.kind,
        "text",
    )


def _count_colour_or_kind(rng, shapes):
    colour, kind = rng.choice(list(COLOURS)), rng.choice(KINDS)
    by_colour = [s for s in shapes if s.colour == colour]
    by_kind = [s for s in shapes if s.kind == kind and s.colour != colour]
    total = len(by_colour) + len(by_kind)
    return _Question(
        f"How many shapes are {colour} or {kind}s?",
        f"I will count the {colour} shapes, then the {kind}s that are not {colour}, and add them.",
        f"The {colour} shapes are: {_listing(by_colour)}, so {len(by_colour)}. "
        f"The {kind}s that are not {colour} are: {_listing(by_kind)}, so {len(by_kind)}. "
        f"{len(by_colour)} + {len(by_kind)} = {total}.",
        str(total),
        "number",
    )


def _count_size_colour(rng, shapes):
    size, colour = rng.choice(SIZES), rng.choice(list(COLOURS))
    of_colour = [s for s in shapes if s.colour == colour]
    found = [s for s in of_colour if s.size == size]
    return _Question(
        f"How many {size} {colour} shapes are there?",
        f"I will find the {colour} shapes, keep the {size} ones and count them.",
        f"The {colour} shapes are: {_listing(of_colour)}. Of these, the {size} ones are: {_listing(found)}. "
        f"That makes {len(found)}.",
        str(len(found)),
        "number",
    )


def _count_difference(rng, shapes):
    first, second = rng.sample(KINDS, 2)
    a = [s for s in shapes if s.kind == first]
    b = [s for s in shapes if s.kind == second]
    if len(a) < len(b):
        (first, a), (second, b) = (second, b), (first, a)
    return _Question(
        f"How many more {first}s than {second}s are there?",
        f"I will count the {first}s and the {second}s and subtract.",
        f"The {first}s are: {_listing(a)}, so {len(a)}. The {second}s are: {_listing(b)}, so {len(b)}. "
        f"{len(a)} - {len(b)} = {len(a) - len(b)}.",
        str(len(a) - len(b)),
        "number",
    )


_DIRECTIONS = {"left of": (0, -1), "right of": (0, 1), "above": (-1, 0), "below": (1, 0)}


def _neighbour_colour(rng, shapes):
    grid = {(s.row, s.col): s for s in shapes}
    options = [
        (ref, direction, grid[(ref.row + dr, ref.col + dc)])
        for ref in _unique(shapes)
        for direction, (dr, dc) in _DIRECTIONS.items()
        if (ref.row + dr, ref.col + dc) in grid
    ]
    if not options:
        return None
    ref, direction, target = rng.choice(options)
    return _Question(
        f"What colour is the shape directly {direction} the {ref.colour} {ref.kind}?",
        f"I will locate the {ref.colour} {ref.kind}, move one cell {direction.split()[0]}, and read the colour there.",
        f"The {ref.colour} {ref.kind} is at {ref.cell}. Directly {direction} it is {target.cell}, "
        f"where there is a {target.name}. So the colour is {target.colour}.",
        target.colour,
        "text",
    )


def _count_same_row(rng, shapes):
    candidates = _unique(shapes)
    if not candidates:
        return None
    ref = rng.choice(candidates)
    others = [s for s in shapes if s.row == ref.row and s is not ref]
    return _Question(
        f"How many other shapes are in the same row as the {ref.colour} {ref.kind}?",
        f"I will locate the {ref.colour} {ref.kind}, then count the other shapes in its row.",
        f"The {ref.colour} {ref.kind} is at {ref.cell}, in the {ROWS[ref.row]} row. "
        f"The other shapes in the {ROWS[ref.row]} row are: {_listing(others)}. That makes {len(others)}.",
        str(len(others)),
        "number",
    )


def _is_above(rng, shapes):
    candidates = _unique(shapes)
    if len(candidates) < 2:
        return None
    first, second = rng.sample(candidates, 2)
    answer = "yes" if first.row < second.row else "no"
    relation = "higher than" if first.row < second.row else "not higher than"
    return _Question(
        f"Is the {first.colour} {first.kind} above the {second.colour} {second.kind}?",
        f"I will find the rows of the {first.colour} {first.kind} and the {second.colour} {second.kind} "
        "and compare them.",
        f"The {first.colour} {first.kind} is at {first.cell}, in the {ROWS[first.row]} row. "
        f"The {second.colour} {second.kind} is at {second.cell}, in the {ROWS[second.row]} row. "
        f"The {ROWS[first.row]} row is {relation} the {ROWS[second.row]} row. So the answer is {answer}.",
        answer,
        "text",
    )


def _which_cell(rng, shapes):
    candidates = _unique(shapes)
    if not candidates:
        return None
    target = rng.choice(candidates)
    return _Question(
        f"Which cell holds the {target.colour} {target.kind}?",
        f"I will find the {target.colour} {target.kind} in the image and name its cell.",
        f"The {target.colour} {target.kind} is the {target.name} at {target.cell}. So the cell is {target.cell}.",
        target.cell,
        "text",
    )


QUESTION_FAMILIES = {
    "easy": (_count_colour, _shape_at),
    "medium": (_count_colour_or_kind, _count_size_colour, _count_difference),
    "hard": (_neighbour_colour, _count_same_row, _is_above),
    "lookup": (_which_cell,),
}


def _distractor_options(rng: random.Random, q: _Question) -> list[str]:
    if q.answer_type == "number":
        pool = [str(n) for n in range(0, 9) if str(n) != q.answer]
    elif q.answer in COLOURS:
        pool = [c for c in COLOURS if c != q.answer]
    elif q.answer in KINDS:
        pool = [k for k in KINDS if k != q.answer] + ["star"]
    else:
        return []
    return rng.sample(pool, len(OPTION_LETTERS) - 1)


def make_item(seed: int, index: int, tier: str, image_size: int = IMAGE_SIZE,
              choice_fraction: float = CHOICE_FRACTION) -> tuple[Record, Image.Image]:
    """Item ``index`` of seed ``seed`` at a difficulty tier: its record and its image; a question with
    options is multiple choice with probability ``choice_fraction`` (the same shapes and questions at any
    fraction).
    """
    rng = random.Random(f"sherlock-synthetic:{seed}:{index}")
    while True:
        shapes = _sample_scene(rng, tier)
        question = rng.choice(QUESTION_FAMILIES[tier])(rng, shapes)
        if question is not None:
            break
    text, conclusion, reasoning = question.question, question.answer, question.reasoning
    answer, answer_type = question.answer, question.answer_type
    distractors = _distractor_options(rng, question)
    if distractors and rng.random() < choice_fraction:
        options = distractors + [question.answer]
        rng.shuffle(options)
        letter = OPTION_LETTERS[options.index(question.answer)]
        text += "\nOptions:\n" + "\n".join(f"{key}. {o}" for key, o in zip(OPTION_LETTERS, options))
        reasoning += f" The answer {question.answer} is option {letter}."
        conclusion, answer, answer_type = letter, letter, "choice"
    response = (
        f"<SUMMARY>{question.summary}</SUMMARY>\n\n<CAPTION>{caption(shapes)}</CAPTION>\n\n"
        f"<REASONING>{reasoning}</REASONING>\n\n<CONCLUSION>{conclusion}</CONCLUSION>"
    )
    record = Record(
        id=f"{SOURCE}/{seed}-{index:06d}",
        image=f"{SOURCE}/{seed}-{index:06d}.png",
        question=text,
        response=response,
        answer=answer,
        answer_type=answer_type,
        tier=tier,
    )
    return record, draw_scene(shapes, image_size, rng)


def _describe(rng, shapes):
    return "Describe the image.", caption(shapes)


def _what_at(rng, shapes):
    row, col = rng.randrange(3), rng.randrange(3)
    found = [s for s in shapes if (s.row, s.col) == (row, col)]
    return (f"What is at {cell_name(row, col)}?",
            f"At {cell_name(row, col)} there is " + (f"a {found[0].name}." if found else "nothing."))


def _where_colour(rng, shapes):
    colour = rng.choice(list(COLOURS))
    found = [s for s in shapes if s.colour == colour]
    return f"Where are the {colour} shapes?", f"The {colour} shapes are: {_listing(found)}."


def _where_kind(rng, shapes):
    kind = rng.choice(KINDS)
    return f"Where are the {kind}s?", f"The {kind}s are: {_listing([s for s in shapes if s.kind == kind])}."


def _how_many(rng, shapes):
    return "How many shapes are there?", f"There are {len(shapes)} shapes."


def _describe_then(name: str, family, instruction):
    """Reading family ``name``: describe the scene, then answer ``family``'s question from that description;
    ``instruction`` rephrases the question ("Where are the red shapes?" → "name its red shapes").
    """
    def read(rng, shapes):
        question, answer = family(rng, shapes)
        return f"Describe the image, then {instruction(question)}.", f"{caption(shapes)} {answer}"

    read.__name__ = f"_{name}"
    return read


def _name_its(question: str) -> str:
    return "name its " + question.removeprefix("Where are the ").removesuffix("?")


_describe_then_colour = _describe_then("describe_then_colour", _where_colour, _name_its)
_describe_then_kind = _describe_then("describe_then_kind", _where_kind, _name_its)
_describe_then_cell = _describe_then("describe_then_cell", _what_at, lambda q: "say w" + q[1:].removesuffix("?"))


def _describe_then_row(rng, shapes):
    row = rng.randrange(3)
    return (f"Describe the image, then name the shapes in its {ROWS[row]} row.",
            f"{caption(shapes)} The shapes in the {ROWS[row]} row are: "
            f"{_listing([s for s in shapes if s.row == row])}.")


def _neighbour_cell(rng, shapes):
    direction, (dr, dc) = rng.choice(list(_DIRECTIONS.items()))
    row, col = rng.choice([(r, c) for r in range(3) for c in range(3) if 0 <= r + dr < 3 and 0 <= c + dc < 3])
    return (f"Which cell is directly {direction} {cell_name(row, col)}?",
            f"Directly {direction} {cell_name(row, col)} is {cell_name(row + dr, col + dc)}.")


def _pick_option(rng, shapes):
    pool = rng.choice((list(COLOURS), list(KINDS) + ["star"], [str(n) for n in range(9)]))
    options = rng.sample(pool, len(OPTION_LETTERS))
    value = rng.choice(options)
    listed = "\n".join(f"{letter}. {option}" for letter, option in zip(OPTION_LETTERS, options))
    return f"Which option is {value}?\nOptions:\n{listed}", f"{value} is option {OPTION_LETTERS[options.index(value)]}."


# what the scene holds: the whole scene, one cell, the shapes of a colour or a kind, how many
PERCEPTION_FAMILIES = (_describe, _what_at, _where_colour, _where_kind, _how_many)
# reading what was just written or asked: a description, then the shapes of a colour, a kind or a row, or
# what is in a cell; the cell next to a cell; the letter of an option
READING_FAMILIES = (_describe_then_colour, _describe_then_kind, _describe_then_row, _describe_then_cell,
                    _neighbour_cell, _pick_option)
FAMILY_GROUPS = {"perception": PERCEPTION_FAMILIES, "reading": READING_FAMILIES}


def make_perception_item(seed: int, index: int, image_size: int = IMAGE_SIZE,
                         families: tuple = PERCEPTION_FAMILIES) -> tuple[Record, Image.Image]:
    """Pre-training item ``index`` of seed ``seed``: a scene and one plain-text question about it.

    :data:`PERCEPTION_FAMILIES` describe the whole scene (the answer is the task's CAPTION text),
    name what is in one cell, list the shapes of one colour or kind with their cells, or count the
    shapes. :data:`READING_FAMILIES` describe the scene and then pick facts out of that description,
    name the cell next to a cell, or give an option's letter. Together they are what an
    instruction-tuned VLM can do before it meets the task; none is one of the task's questions or
    uses its 4-stage format. Scenes are drawn as in every tier; the random stream is separate from
    :func:`make_item`'s, so no task item reappears here.
    """
    rng = random.Random(f"sherlock-perception:{seed}:{index}")
    shapes = _sample_scene(rng, TIERS[index % len(TIERS)])
    family = rng.choice(families)
    question, answer = family(rng, shapes)
    record = Record(id=f"perception-{seed}-{index:06d}", image=f"images/p{seed}-{index:06d}.png",
                    question=question, response=answer, answer_type="text", tier=family.__name__.strip("_"))
    return record, draw_scene(shapes, image_size, rng)


def generate_synthetic(
    output_dir: str | Path,
    num_items: int,
    seed: int = 0,
    tiers: tuple[str, ...] = TIERS,
    image_size: int = IMAGE_SIZE,
    choice_fraction: float = CHOICE_FRACTION,
) -> Path:
    """Write ``num_items`` items (tiers in rotation) as ``output_dir/data.jsonl`` + ``synthetic/`` (images).

    Returns the jsonl path; load it with :func:`sherlock.data.load_llava_cot`.
    """
    unknown = set(tiers) - set(TIERS + DIAGNOSTIC_TIERS)
    if unknown or not tiers:
        raise ValueError(f"tiers must be a non-empty subset of {TIERS + DIAGNOSTIC_TIERS}, got {tiers}")
    if num_items <= 0:
        raise ValueError(f"num_items must be positive, got {num_items}")
    if not 0.0 <= choice_fraction <= 1.0:
        raise ValueError(f"choice_fraction must be in [0, 1], got {choice_fraction}")
    output_dir = Path(output_dir)
    (output_dir / SOURCE).mkdir(parents=True, exist_ok=True)
    records = []
    for index in tqdm(range(num_items), desc="synthetic items", unit=" items"):
        record, image = make_item(seed, index, tiers[index % len(tiers)], image_size, choice_fraction)
        image.save(output_dir / record.image)
        records.append(record)
    write_llava_cot(records, output_dir / DATA_FILE)
    return output_dir / DATA_FILE
