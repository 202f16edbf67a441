import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from sherlock.data.synthetic import make_item  # noqa: E402


@pytest.fixture(scope="session")
def synthetic_corpus():
    items = [make_item(0, i, tier)[0] for i, tier in enumerate(["easy", "medium", "hard"] * 40)]
    return [f"{r.question}\n{r.response}" for r in items]


@pytest.fixture(scope="session")
def tiny_tokenizer(synthetic_corpus):
    from sherlock.models.tiny import train_tokenizer

    return train_tokenizer(synthetic_corpus, vocab_size=400)
