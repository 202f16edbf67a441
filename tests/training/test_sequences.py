"""The 10-sequence layout: a pair's sequences, suffix-only labels, 2 slots without L_SC."""

import pytest
import torch

from sherlock.data.preferences import read_pairs
from sherlock.losses import DPO_SEQUENCES, NUM_SEQUENCES, SherlockLossConfig, sherlock_objective
from sherlock.models.loading import load_vlm
from sherlock.training.packing import sequence_logps
from sherlock.training.sequences import PreferenceCollator, PreferenceDataset, pair_sequences


def test_ten_sequences_per_pair_with_suffix_only_labels(preference_dir):
    pair = read_pairs(preference_dir)[0]
    triples = pair_sequences(pair)
    assert len(triples) == NUM_SEQUENCES
    assert triples[0][1:] == ("", pair.chosen) and triples[1][1:] == ("", pair.rejected)
    assert [t[1:] for t in triples[2:6]] == [(pair.prefix_w, pair.suffix_w), (pair.prefix_l, pair.suffix_l),
                                           (pair.prefix_l, pair.suffix_w), (pair.prefix_w, pair.suffix_l)]
    assert triples[2][0] == triples[5][0] != triples[6][0]
    assert pair.rejected in triples[2][0] and pair.chosen in triples[6][0]


def test_without_sc_only_chosen_and_rejected_are_run(tiny_model_dir, preference_dir):
    """The 2-slot layout gives the same log-probs as slots 0 and 1 of the 10-slot layout."""
    model, processor = load_vlm(tiny_model_dir, dtype=torch.float32)
    pairs = read_pairs(preference_dir)[:3]
    collator = PreferenceCollator(processor.tokenizer.pad_token_id)
    full = PreferenceDataset(pairs, preference_dir, processor)
    dpo = PreferenceDataset(pairs, preference_dir, processor, DPO_SEQUENCES)
    assert [len(dpo[i]["sequences"]) for i in range(3)] == [2, 2, 2]
    with torch.no_grad():
        ten = sequence_logps(model, collator([full[i] for i in range(3)]))
        two = sequence_logps(model, collator([dpo[i] for i in range(3)]))
    assert two.shape == (3, 2) and torch.allclose(two, ten[:, :2], atol=1e-4)
    config = SherlockLossConfig(use_sc=True)
    with pytest.raises(ValueError, match="10-sequence layout"):
        sherlock_objective(two, two, torch.ones(3), torch.zeros(3), config)
