import json
import shutil
from pathlib import Path

import pytest

from sherlock.data.llava_cot import DataQualityError, load_llava_cot
from sherlock.data.sampling import ManifestMismatchError, sample_disjoint, sample_to_dir, verify_subset
from sherlock.data.synthetic import TIERS, generate_synthetic, make_item
from sherlock.reasoning import is_correct, parse_stages

FIXTURE = Path(__file__).parents[1] / "fixtures" / "llava_cot"


def test_loader_reads_the_release_layout(tmp_path):
    data = load_llava_cot(FIXTURE / "train.jsonl", quarantine_path=tmp_path / "q.jsonl")
    ids = [r.id for r in data.records]
    assert data.num_lines == 6 and data.num_quarantined == 0
    assert not (tmp_path / "q.jsonl").exists()  # nothing to report: nothing written
    assert "ai2d-1017#0" in ids and "ai2d-1017#1" in ids and len(ids) == 7  # one two-turn line
    first = data.records[0]
    assert first.question == "What is the man riding?"  # <image> placeholder removed
    assert parse_stages(first.response).conclusion.strip() == "Motorcycle"


@pytest.fixture()
def bad_copy(tmp_path):
    root = tmp_path / "release"
    shutil.copytree(FIXTURE, root)
    (root / "coco/train2017/broken.jpg").write_text("not an image")
    good = json.loads((FIXTURE / "train.jsonl").read_text().splitlines()[1])
    bad_lines = [
        "{not json",
        json.dumps({**good, "id": "no-image", "image": "coco/train2017/missing.jpg"}),
        json.dumps({**good, "id": "broken-image", "image": "coco/train2017/broken.jpg"}),
        json.dumps({**good, "id": "no-caption", "conversations": [
            good["conversations"][0],
            {"from": "gpt", "value": "<SUMMARY>s</SUMMARY><REASONING>r</REASONING><CONCLUSION>c</CONCLUSION>"}]}),
        json.dumps({"id": "no-conversations", "image": good["image"]}),
        json.dumps(good),  # duplicate id
    ]
    with open(root / "train.jsonl", "a") as f:
        f.write("\n".join(bad_lines) + "\n")
    return root


def test_quarantine_records_every_bad_line_with_its_reason(bad_copy):
    data = load_llava_cot(bad_copy / "train.jsonl", max_bad_fraction=1.0)
    assert len(data.records) == 7 and data.num_quarantined == 6 and data.num_lines == 12
    rows = [json.loads(line) for line in data.quarantine_path.read_text().splitlines()]
    reasons = [row["reason"] for row in rows]
    assert [row["line"] for row in rows] == [7, 8, 9, 10, 11, 12]
    assert reasons[0].startswith("malformed JSON")
    assert reasons[1].startswith("image not found")
    assert reasons[2].startswith("image unreadable")
    assert "missing stage(s): CAPTION" in reasons[3]
    assert "missing field 'conversations'" in reasons[4]
    assert "duplicate id" in reasons[5]
    assert rows[0]["raw"] == "{not json"


def test_loading_fails_over_the_bad_fraction_limit(bad_copy):
    with pytest.raises(DataQualityError, match=r"6 of 12 lines .*train.quarantine.jsonl"):
        load_llava_cot(bad_copy / "train.jsonl")
    assert len((bad_copy / "train.quarantine.jsonl").read_text().splitlines()) == 6


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="data file not found"):
        load_llava_cot(tmp_path / "nope.jsonl")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return load_llava_cot(generate_synthetic(root, 60, seed=3))


def test_sampling_is_disjoint_reproducible_and_order_independent(synthetic):
    sizes = {"D_A": 20, "D_B": 25}
    first = sample_disjoint(synthetic.records, sizes, seed=11)
    again = sample_disjoint(list(reversed(synthetic.records)), sizes, seed=11)
    other = sample_disjoint(synthetic.records, sizes, seed=12)
    ids = {name: [r.id for r in recs] for name, recs in first.items()}
    assert len(ids["D_A"]) == 20 and len(ids["D_B"]) == 25
    assert not set(ids["D_A"]) & set(ids["D_B"])
    assert ids == {name: [r.id for r in recs] for name, recs in again.items()}
    assert ids != {name: [r.id for r in recs] for name, recs in other.items()}
    with pytest.raises(ValueError, match="need 70 records"):
        sample_disjoint(synthetic.records, {"D_A": 40, "D_B": 30}, seed=0)


def test_manifest_traces_records_and_images(synthetic, tmp_path):
    manifest = sample_to_dir(synthetic, tmp_path / "subsets", {"D_A": 10, "D_B": 5}, seed=4)
    assert [len(manifest["subsets"][n]) for n in ("D_A", "D_B")] == [10, 5]
    data = verify_subset(tmp_path / "subsets", "D_A")
    assert [r.id for r in data.records] == [e["id"] for e in manifest["subsets"]["D_A"]]
    # tampering with an image is detected
    (tmp_path / "subsets" / "D_A" / data.records[0].image).unlink()
    shutil.copy(synthetic.image_root / data.records[1].image, tmp_path / "subsets" / "D_A" / data.records[0].image)
    with pytest.raises(ManifestMismatchError, match="image of record"):
        verify_subset(tmp_path / "subsets", "D_A")


def test_synthetic_items_are_deterministic_and_correct():
    for index, tier in enumerate(TIERS * 20):
        record, image = make_item(5, index, tier)
        again, image_again = make_item(5, index, tier)
        assert record == again and image.tobytes() == image_again.tobytes()
        assert record.tier == tier and record.answer is not None
        assert is_correct(record.response, record.answer, record.answer_type)
    assert make_item(5, 0, "easy")[0] != make_item(6, 0, "easy")[0]


def test_synthetic_generator_writes_loadable_files(synthetic):
    assert len(synthetic.records) == 60 and synthetic.num_quarantined == 0
    assert {r.tier for r in synthetic.records} == set(TIERS)
    assert {r.answer_type for r in synthetic.records} == {"number", "text", "choice"}
    with pytest.raises(ValueError, match="tiers"):
        generate_synthetic("unused", 5, tiers=("impossible",))
