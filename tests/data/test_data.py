import json
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from sherlock.answers import is_correct
from sherlock.data.llava_cot import DataQualityError, conversation_of, load_llava_cot, write_llava_cot
from sherlock.data.sampling import ManifestMismatchError, sample_disjoint, sample_to_dir, verify_subset
from sherlock.data.schema import Record
from sherlock.data.synthetic import TIERS, generate_synthetic, make_item
from sherlock.reasoning import parse_stages

FIXTURE = Path(__file__).parents[1] / "fixtures" / "llava_cot"


def test_loader_reads_the_release_layout(tmp_path):
    data = load_llava_cot(FIXTURE / "train.jsonl", quarantine_path=tmp_path / "q.jsonl")
    ids = [r.id for r in data.records]
    assert data.num_lines == 6 and data.num_quarantined == 0
    assert not (tmp_path / "q.jsonl").exists()  # nothing to report: nothing written
    assert "ai2d/ai2d-1017#0" in ids and "ai2d/ai2d-1017#1" in ids and len(ids) == 7  # one two-turn line
    assert all(i.startswith(r.image.split("/")[0] + "/") for i, r in zip(ids, data.records))  # source namespaces
    first = data.records[0]
    assert first.question == "What is the man riding?"  # <image> placeholder removed
    assert parse_stages(first.response).conclusion.strip() == "Motorcycle"
    turns = {r.id: r for r in data.records}
    opening, follow_up = turns["ai2d/ai2d-1017#0"], turns["ai2d/ai2d-1017#1"]
    assert opening.context == () and follow_up.context == ((opening.question, opening.response),)


def test_a_follow_up_turn_is_written_back_with_its_context_and_read_again(tmp_path):
    data = load_llava_cot(FIXTURE / "train.jsonl")
    write_llava_cot(data.records, tmp_path / "again.jsonl")
    lines = [json.loads(line) for line in (tmp_path / "again.jsonl").read_text().splitlines()]
    assert [line.get("turn") for line in lines if line["id"].startswith("ai2d/")] == [None, 1]
    assert load_llava_cot(tmp_path / "again.jsonl", image_root=FIXTURE).records == data.records
    follow_up = next(line for line in lines if line.get("turn"))
    bad = [follow_up | {"turn": turn} for turn in ("1", 0, 2, True, 1.0)]
    (tmp_path / "bad.jsonl").write_text("".join(json.dumps(line) + "\n" for line in [follow_up, *bad]))
    loaded = load_llava_cot(tmp_path / "bad.jsonl", image_root=FIXTURE, max_bad_fraction=1.0)
    assert len(loaded.records) == 1 and loaded.num_quarantined == 5
    assert all("turn must be the index of the line's last turn (1)" in json.loads(line)["reason"]
               for line in loaded.quarantine_path.read_text().splitlines())


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


def test_the_same_id_from_two_sources_is_two_records(tmp_path):
    root = tmp_path / "release"
    shutil.copytree(FIXTURE, root)
    line = json.loads((FIXTURE / "train.jsonl").read_text().splitlines()[1])
    other = {**line, "image": "sqa/train/1342/image.png"}  # chartqa's id again, from ScienceQA
    with open(root / "train.jsonl", "a") as f:
        f.write(json.dumps(other) + "\n" + json.dumps(line) + "\n")  # and a true duplicate
    data = load_llava_cot(root / "train.jsonl", max_bad_fraction=0.5)
    ids = [r.id for r in data.records]
    assert f"chartqa/{line['id']}" in ids and f"sqa/{line['id']}" in ids
    assert data.num_quarantined == 1 and "duplicate id" in data.quarantine_path.read_text()
    write_llava_cot(data.records, tmp_path / "again.jsonl")  # written back, the ids stay as they are
    assert [r.id for r in load_llava_cot(tmp_path / "again.jsonl", image_root=root).records] == ids


def _conversations(name: str, num: int, turns: int, shared_images: int) -> list[Record]:
    """``num`` conversations of ``turns`` turns; odd ones share an image ``shared_images`` at a time."""
    records = []
    for c in range(num):
        image = f"coco/{name}{c // shared_images if c % 2 else 1000 + c}.jpg"
        records += [Record(f"coco/{name}{c}#{t}" if turns > 1 else f"coco/{name}{c}", image, f"q{t}", "r")
                    for t in range(turns)]
    return records


@pytest.mark.parametrize("seed", range(6))
def test_subsets_are_disjoint_by_conversation_and_by_image(seed):
    records = _conversations("c", 60, 3, shared_images=4) + _conversations("s", 40, 1, shared_images=2)[::-1]
    subsets = sample_disjoint(records, {"D_A": 50, "D_B": 50, "D_U": 30}, seed)
    assert {name: len(recs) for name, recs in subsets.items()} == {"D_A": 50, "D_B": 50, "D_U": 30}
    for key in (lambda r: conversation_of(r.id), lambda r: r.image):
        owners = {}
        for name, recs in subsets.items():
            for record in recs:
                assert owners.setdefault(key(record), name) == name  # one subset per conversation and image
    assert sample_disjoint(list(reversed(records)), {"D_A": 50, "D_B": 50, "D_U": 30}, seed) == subsets
    with pytest.raises(ValueError, match="whole conversations and images"):
        sample_disjoint(_conversations("c", 4, 3, shared_images=1), {"D_A": 2, "D_B": 10}, seed)


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


def test_lookup_items_name_the_one_cell_of_a_unique_shape():
    """The diagnostic family: the asked colour + kind occurs once in the scene, the answer is its cell, the
    gold response is graded right and any other cell wrong; the default tiers never draw it."""
    from sherlock.data.synthetic import DIAGNOSTIC_TIERS

    for index in range(40):
        record, _ = make_item(7, index, "lookup")
        colour, kind = re.fullmatch(r"Which cell holds the (\w+) (\w+)\?", record.question).groups()
        listed = re.findall(r"(top left|top middle|top right|middle left|center|middle right|bottom left|"
                            r"bottom middle|bottom right): an? (?:small|large) (\w+) (\w+)", record.response)
        assert [cell for cell, c, k in listed if (c, k) == (colour, kind)] == [record.answer]
        assert record.answer_type == "text" and record.tier == "lookup"
        assert is_correct(record.response, record.answer, "text")
        other = next(cell for cell, *_ in listed if cell != record.answer)
        assert not is_correct(f"<CONCLUSION>{other}</CONCLUSION>", record.answer, "text")
    assert "lookup" in DIAGNOSTIC_TIERS and "lookup" not in TIERS


def test_synthetic_generator_writes_loadable_files(synthetic):
    assert len(synthetic.records) == 60 and synthetic.num_quarantined == 0
    assert {r.tier for r in synthetic.records} == set(TIERS)
    assert {r.answer_type for r in synthetic.records} == {"number", "text"}  # the embedded task: open questions
    with pytest.raises(ValueError, match="tiers"):
        generate_synthetic("unused", 5, tiers=("impossible",))
    with pytest.raises(ValueError, match="choice_fraction"):
        generate_synthetic("unused", 5, choice_fraction=1.5)


def test_multiple_choice_is_the_same_question_with_options():
    """At a choice fraction the questions that have options become multiple choice: same shapes, same question
    stem, the gold value among four options and the letter concluded; the rest are unchanged."""
    asked = 0
    for index, tier in enumerate(TIERS * 30):
        open_item, _ = make_item(9, index, tier)
        item, _ = make_item(9, index, tier, choice_fraction=1.0)
        caption_of = [text.split("</CAPTION>")[0] for text in (open_item.response, item.response)]
        assert caption_of[0] == caption_of[1] and item.question.startswith(open_item.question)
        if item.answer_type != "choice":
            assert item == open_item
            continue
        asked += 1
        options = dict(line.split(". ", 1) for line in item.question.split("Options:\n")[1].splitlines())
        assert options[item.answer] == open_item.answer and len(options) == 4
        assert is_correct(item.response, item.answer, "choice", options)
    assert asked > 30


def _png_header_only(path, width, height):
    """A PNG whose IHDR declares ``width`` × ``height`` (a decompression bomb's header), with no pixel data."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IEND", b""))


def test_hostile_lines_and_images_are_quarantined_with_their_line_never_a_crash(tmp_path):
    """Invalid UTF-8, non-string values, paths out of the image root (``..``, absolute, a symbolic link),
    a truncated JPEG (which ``verify()`` passes), a decompression bomb's header and a 12000 x 12000 PNG (under
    PIL's bomb check, 1.7 GB of training RSS): each line is
    quarantined with its number and reason; the good lines load."""
    from PIL import Image

    root = tmp_path / "release"
    shutil.copytree(FIXTURE, root)
    images = root / "coco/train2017"
    whole = (images / "000000391895.jpg").read_bytes()
    (images / "truncated.jpg").write_bytes(whole[: int(len(whole) * 0.9)])  # cut inside the scan data
    with Image.open(images / "truncated.jpg") as image:
        image.verify()  # what the loader used to check: it passes
    _png_header_only(images / "bomb.png", 20000, 20000)
    _png_header_only(images / "big.png", 12000, 12000)
    (tmp_path / "outside.jpg").write_bytes(whole)
    (images / "link.jpg").symlink_to(tmp_path / "outside.jpg")
    good = json.loads((FIXTURE / "train.jsonl").read_text().splitlines()[0])
    lines = [json.dumps({**good, "id": name, "image": image}) for name, image in [
        ("truncated", "coco/train2017/truncated.jpg"), ("bomb", "coco/train2017/bomb.png"),
        ("big", "coco/train2017/big.png"), ("dotdot", "../outside.jpg"), ("absolute", str(tmp_path / "outside.jpg")),
        ("link", "coco/train2017/link.jpg"), ("not-a-string", 7)]]
    lines.append(json.dumps({**good, "id": "number-value", "conversations": [
        good["conversations"][0], {"from": "gpt", "value": 42}]}))
    with open(root / "train.jsonl", "ab") as out:
        out.write(("\n".join(lines) + "\n").encode())
        out.write(json.dumps({**good, "id": "latin-1"}).encode()[:-2] + b'\xe9"}\n')  # one invalid UTF-8 byte
    data = load_llava_cot(root / "train.jsonl", max_bad_fraction=1.0)
    assert data.num_lines == 15 and len(data.records) == 7
    rows = [json.loads(line) for line in data.quarantine_path.read_text().splitlines()]
    reasons = {row["line"]: row["reason"] for row in rows}
    assert sorted(reasons) == list(range(7, 16))
    assert reasons[7].startswith("image unreadable") and "truncated" in reasons[7]
    assert "DecompressionBombError" in reasons[8]
    assert reasons[9].startswith("image too large") and "12000x12000, over the 16777216-pixel limit" in reasons[9]
    assert "leaves the image root" in reasons[10] and "leaves the image root" in reasons[11]
    assert "resolves outside the image root" in reasons[12]
    assert reasons[13] == "image must be a non-empty string" and reasons[14] == "turn 0: message values must be strings"
    assert reasons[15].startswith("not UTF-8 text") and "\ufffd" in rows[-1]["raw"]


def test_images_are_read_upright_and_16_bit_ones_keep_their_tones(tmp_path):
    import numpy as np
    from PIL import Image

    from sherlock.data.schema import Record, open_image

    ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)  # 0 … 63,000 of 65,535
    Image.fromarray(ramp).save(tmp_path / "deep.png")  # a 16-bit greyscale PNG
    deep = open_image(tmp_path, Record(id="d", image="deep.png", question="q", response="r"))
    assert deep.getpixel((0, 0)) == (0, 0, 0) and deep.getpixel((7, 7))[0] == round(63000 / 257)
    assert deep.getpixel((4, 2))[0] == round(20000 / 257)  # not clipped to white
    wide = Image.new("RGB", (40, 10), (255, 0, 0))
    exif = wide.getexif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    wide.save(tmp_path / "rotated.jpg", exif=exif)
    upright = open_image(tmp_path, Record(id="r", image="rotated.jpg", question="q", response="r"))
    assert upright.size == (10, 40)


def test_preference_files_are_checked_and_quarantined_like_data_files(tmp_path):
    """Every malformed pair line is quarantined with its line number and reason; the good ones load."""
    import json

    from sherlock.data.preferences import PreferencePair, read_pairs, write_pairs

    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "ok.png")
    good = PreferencePair("p0", "ok.png", "q", "<SUMMARY>a</SUMMARY>", "w", "<SUMMARY>a</SUMMARY>", "l", 2, 0.5)
    directory = tmp_path / "pairs"
    write_pairs([good], tmp_path, directory)
    row = json.loads((directory / "pairs.jsonl").read_text())
    truncated = directory / "cut.png"
    Image.new("RGB", (64, 64)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    bad = [row | {"truncation_step": "2"}, row | {"truncation_step": 9}, row | {"noise_level": True},
           row | {"noise_level": 1.5}, row | {"question": 7}, {k: v for k, v in row.items() if k != "suffix_l"},
           row,  # the same pair id again
           row | {"id": "p1", "image": "../ok.png"}, row | {"id": "p2", "image": "cut.png"},
           row | {"id": "p3", "image": "missing.png"}, ["not", "an", "object"],
           row | {"id": "p4", "context": [["q", 7]]}, row | {"id": "p5", "context": "q r"}]
    with open(directory / "pairs.jsonl", "a") as lines:
        lines.writelines(json.dumps(b) + "\n" for b in bad)
        lines.write("{broken\n")
    with pytest.raises(DataQualityError, match="14 of 15 lines"):
        read_pairs(directory)
    assert read_pairs(directory, max_bad_fraction=1.0) == [good]
    reasons = [json.loads(line) for line in (directory / "pairs.quarantine.jsonl").read_text().splitlines()]
    assert [r["line"] for r in reasons] == list(range(2, 16))
    expected = ["truncation_step must be an integer", "truncation_step must be an integer", "noise_level must be",
                "noise_level must be", "must be strings", "missing field(s) ['suffix_l']", "duplicate pair id",
                "leaves the image root", "image unreadable", "image not found", "not a JSON object",
                "context must be", "context must be", "malformed JSON"]
    assert all(text in r["reason"] for text, r in zip(expected, reasons)), reasons
