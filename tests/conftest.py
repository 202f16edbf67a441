import hashlib
import os
import re
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from sherlock.data.synthetic import TOKENIZER_CHOICE_FRACTION, make_item  # noqa: E402
from sherlock.models.tiny import tokenizer_corpus  # noqa: E402

# Free disk where the tests write (tmp_path, the TrainJob's environment in /tmp), reported at the end: a full
# disk shows up as unrelated errors (sqlite, pip); the lowest point between tests names the test after it.
_free_disk = {}


def _free_gb() -> float:
    return shutil.disk_usage(_free_disk["where"]).free / 2**30


def pytest_sessionstart(session):
    _free_disk["where"] = tempfile.gettempdir()  # once: a test may point tempfile elsewhere for a while
    _free_disk.update(start=_free_gb(), lowest=_free_gb(), after="the start")


def pytest_runtest_logfinish(nodeid, location):
    if (free := _free_gb()) < _free_disk["lowest"]:
        _free_disk.update(lowest=free, after=nodeid)


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(f"free disk in {_free_disk['where']}: {_free_disk['start']:.1f} GiB at the start, "
                                f"lowest {_free_disk['lowest']:.1f} GiB (after {_free_disk['after']}), "
                                f"{_free_gb():.1f} GiB at the end")


@pytest.fixture(scope="session")
def synthetic_corpus():
    items = [make_item(0, i, tier, choice_fraction=TOKENIZER_CHOICE_FRACTION)[0]
             for i, tier in enumerate(["easy", "medium", "hard"] * 40)]
    return tokenizer_corpus(items)


@pytest.fixture(scope="session")
def tiny_tokenizer(synthetic_corpus):
    from sherlock.models.tiny import train_tokenizer

    return train_tokenizer(synthetic_corpus, vocab_size=400)


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory):
    """A small synthetic data set on disk (all tiers), loaded."""
    from sherlock.data.llava_cot import load_llava_cot
    from sherlock.data.synthetic import generate_synthetic

    return load_llava_cot(generate_synthetic(tmp_path_factory.mktemp("synthetic-data"), 96, seed=0))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, synthetic_corpus):
    """A saved tiny Mllama checkpoint (random weights)."""
    from sherlock.models.tiny import build_tiny_vlm
    return build_tiny_vlm(tmp_path_factory.mktemp("tiny"), synthetic_corpus, vocab_size=600)


@pytest.fixture(scope="session")
def family_model_dirs(tmp_path_factory, synthetic_corpus, tiny_model_dir):
    """A saved tiny checkpoint of every model family (random weights), by family name."""
    from sherlock.models.families import FAMILIES

    return {name: tiny_model_dir if name == "mllama" else
            family.build(tmp_path_factory.mktemp(f"tiny-{name}"), synthetic_corpus, vocab_size=600)
            for name, family in FAMILIES.items()}


@pytest.fixture(scope="session")
def subset_dir(tmp_path_factory, synthetic_data):
    """The first 16 synthetic records as a subset directory (data.jsonl + images)."""
    from sherlock.data.sampling import write_subsets

    root = tmp_path_factory.mktemp("subsets")
    write_subsets({"D_A": synthetic_data.records[:16]}, synthetic_data.image_root, root, seed=0, source="test")
    return root / "D_A"


@pytest.fixture(scope="session")
def preference_dir(tmp_path_factory, tiny_model_dir, subset_dir):
    """Offline preference pairs on the 16-record subset; the rejected suffixes come from the tiny model."""
    from sherlock.stages.build_preferences import BuildPreferencesConfig, run_build_preferences

    output = tmp_path_factory.mktemp("pairs")
    run_build_preferences(BuildPreferencesConfig(model=str(tiny_model_dir), data=str(subset_dir),
                                               output=str(output), max_new_tokens=24, seed=0))
    return output


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server (a real HTTP endpoint, authentication on) with its credentials."""
    from servers import start_s3_server

    server = start_s3_server()
    yield server
    server.process.terminate()
    server.process.wait(10)


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """The S3 server's endpoint and keys in the environment, as a pod gets them from a Secret."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server


@pytest.fixture
def bucket(s3_env, request):
    """A fresh bucket per test."""
    from sherlock.storage import Storage

    unique = hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:8]  # parametrized tests differ here
    name = f"t-{re.sub(r'[^a-z0-9]+', '-', request.node.name.lower())[:32].strip('-')}-{unique}-{os.getpid()}"
    Storage().client.make_bucket(name)
    return name


@pytest.fixture
def register_entry_point(tmp_path, monkeypatch):
    """``register_entry_point(group, name, signature, body)``: an installed distribution (a dist-info on
    ``sys.path``) that registers ``def function(<signature>): <body>`` as ``name`` under ``group``."""
    def register(group: str, name: str, signature: str, body: str) -> None:
        package = f"plugin_{name}"
        (tmp_path / f"{package}.py").write_text(f"def function({signature}):\n    {body}\n")
        info = tmp_path / f"{package}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[{group}]\n{name} = {package}:function\n")
        monkeypatch.syspath_prepend(str(tmp_path))

    return register


@pytest.fixture
def register_judge(register_entry_point):
    """``register_judge(name, body)``: ``def judge(question, responses): <body>`` under ``sherlock.judges``."""
    return lambda name, body: register_entry_point("sherlock.judges", name, "question, responses", body)
