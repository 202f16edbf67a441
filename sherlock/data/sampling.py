"""Disjoint, seeded random subsets (D_A, D_B; spec §1 Stage I) with a traceable manifest.

Each subset is written as a self-contained directory in the LLaVA-CoT layout (``data.jsonl`` and
its images); ``manifest.json`` lists, per subset, every record id with the sha256 of the record's
content and of its image, so a subset can be rebuilt and checked later.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

from sherlock.data.llava_cot import DATA_FILE, LoadedData, conversation_of, load_llava_cot, write_llava_cot
from sherlock.data.schema import Record, file_digest

DEFAULT_SUBSET_SIZES = {"D_A": 10_000, "D_B": 10_000}
MANIFEST = "manifest.json"


class ManifestMismatchError(ValueError):
    """A subset directory no longer matches its manifest."""


def units(records: list[Record]) -> list[list[Record]]:
    """Records that must share a subset: the turns of a conversation, and every record of an image
    (connected components over both), each unit ordered by id, the units by their first id.
    """
    parent = list(range(len(records)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[tuple[str, str], int] = {}
    for index, record in enumerate(records):
        for key in (("conversation", conversation_of(record.id)), ("image", record.image)):
            other = first.setdefault(key, index)
            parent[root(index)] = root(other)
    groups: dict[int, list[Record]] = {}
    for index, record in enumerate(records):
        groups.setdefault(root(index), []).append(record)
    return sorted((sorted(group, key=lambda r: r.id) for group in groups.values()), key=lambda g: g[0].id)


def sample_disjoint(records: list[Record], sizes: dict[str, int], seed: int) -> dict[str, list[Record]]:
    """Draw disjoint random subsets of the given sizes (in records), whole units at a time.

    A conversation's turns and the records of one image form a unit (:func:`units`) that lands in one
    subset only, so no subset trains on a turn or an image another is evaluated or paired on. Units
    are ordered by their first id and drawn at random (seeded); each fills the first subset with room
    for it. With one record per unit (the synthetic task) this is a seeded draw of records ordered by
    id, independent of the source file's order.
    """
    if any(size < 0 for size in sizes.values()):
        raise ValueError(f"subset sizes must be non-negative: {sizes}")
    total = sum(sizes.values())
    if total > len(records):
        raise ValueError(f"subsets need {total} records ({sizes}) but the source holds {len(records)}")
    grouped = units(records)
    rng = random.Random(seed)
    drawn = rng.sample(range(len(grouped)), min(total, len(grouped)))
    rest = sorted(set(range(len(grouped))) - set(drawn))
    rng.shuffle(rest)
    subsets: dict[str, list[Record]] = {name: [] for name in sizes}

    def full() -> bool:
        return all(len(subsets[n]) == size for n, size in sizes.items())

    for index in drawn + rest:
        if full():
            break
        unit = grouped[index]
        name = next((n for n, size in sizes.items() if len(subsets[n]) + len(unit) <= size), None)
        if name is not None:
            subsets[name] += unit
    if full():
        return subsets
    raise ValueError(f"cannot fill subsets of {sizes} records with whole conversations and images: "
                     f"{len(records)} records in {len(grouped)} units fill {({n: len(v) for n, v in subsets.items()})}")


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link ``source`` to ``target`` (a copy across file systems); an existing target is kept."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        return
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def write_subsets(
    subsets: dict[str, list[Record]], image_root: Path, output_dir: str | Path, seed: int, source: str
) -> dict:
    """Write each subset as ``output_dir/<name>/data.jsonl`` + images and return the manifest."""
    output_dir = Path(output_dir)
    manifest: dict = {"seed": seed, "source": source, "subsets": {}}
    for name, records in subsets.items():
        subset_dir = output_dir / name
        entries = []
        for record in records:
            link_or_copy(Path(image_root) / record.image, subset_dir / record.image)
            entries.append(
                {"id": record.id, "record_sha256": record.digest(),
                 "image_sha256": file_digest(subset_dir / record.image)}
            )
        write_llava_cot(records, subset_dir / DATA_FILE)
        manifest["subsets"][name] = entries
    (output_dir / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def sample_to_dir(
    data: LoadedData, output_dir: str | Path, sizes: dict[str, int] | None = None, seed: int = 0
) -> dict:
    """Sample disjoint subsets from loaded data and write them with their manifest."""
    sizes = dict(DEFAULT_SUBSET_SIZES if sizes is None else sizes)
    subsets = sample_disjoint(data.records, sizes, seed)
    return write_subsets(subsets, data.image_root, output_dir, seed, source=str(data.path))


def verify_subset(subset_root: str | Path, name: str) -> LoadedData:
    """Load subset ``name`` and check every record and image against the manifest."""
    subset_root = Path(subset_root)
    manifest = json.loads((subset_root / MANIFEST).read_text())
    if name not in manifest["subsets"]:
        raise KeyError(f"no subset {name!r} in {subset_root / MANIFEST}; has {sorted(manifest['subsets'])}")
    data = load_llava_cot(subset_root / name / DATA_FILE, max_bad_fraction=0.0)
    by_id = {r.id: r for r in data.records}
    expected = manifest["subsets"][name]
    if sorted(by_id) != sorted(e["id"] for e in expected):
        raise ManifestMismatchError(f"record ids of {name} differ from the manifest")
    for entry in expected:
        record = by_id[entry["id"]]
        if record.digest() != entry["record_sha256"]:
            raise ManifestMismatchError(f"record {entry['id']} changed since sampling")
        if file_digest(data.image_root / record.image) != entry["image_sha256"]:
            raise ManifestMismatchError(f"image of record {entry['id']} changed since sampling")
    return data
