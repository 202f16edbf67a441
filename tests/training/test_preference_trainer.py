"""The Sherlock preference trainer: 10-sequence layout, cached reference, loss value, learning, metrics."""

import json
import math

import pytest
import torch

from sherlock.config import ConfigError
from sherlock.data.preferences import read_pairs
from sherlock.losses import DPO_SEQUENCES, sherlock_objective
from sherlock.models.loading import load_vlm
from sherlock.stages.train_preferences import TrainPreferencesConfig, run_train_preferences
from sherlock.training.packing import sequence_logps
from sherlock.training.reference import reference_cache_path
from sherlock.training.sequences import PreferenceCollator, PreferenceDataset, labelled_tokens
from sherlock.training.setup import IGNORE_INDEX

TRL_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
               "logps/rejected", "loss/sc", "loss/dpo", "beta/sc_mean", "beta/sc_min", "beta/sc_max")


def _train(tiny_model_dir, preference_dir, output, **overrides):
    settings = {"logging_steps": 1, "batch_size": 4, "max_steps": 1, "reference_cache": str(output.parent / "cache")}
    config = TrainPreferencesConfig(model=str(tiny_model_dir), data=str(preference_dir), output=str(output),
                                      **settings | overrides)
    out = run_train_preferences(config)
    return json.loads((out / "trainer_state.json").read_text())["log_history"]


@pytest.mark.parametrize(
    "switches, expected",
    [({}, 2 + 0.25 * math.log(2)), ({"use_sc": False}, 0.25 * math.log(2)), ({"use_dpo": False}, 2.0),
     ({"alpha": 1.0, "dynamic_beta": False}, 2 + math.log(2))],
)
def test_first_step_loss_is_the_value_at_policy_equal_reference(tiny_model_dir, preference_dir, tmp_path, switches,
                                                                 expected):
    """With π_θ = π_ref every r is 0: v = u = 0 gives L_SC = 2 and L_DPO = log 2 (Eq. 6–7)."""
    logs = _train(tiny_model_dir, preference_dir, tmp_path / "run", **switches)
    assert logs[0]["loss"] == pytest.approx(expected, abs=1e-3)
    assert set(TRL_METRICS) <= set(logs[0])


def test_static_beta_is_the_base_for_every_sample(tiny_model_dir, preference_dir, tmp_path):
    dynamic = _train(tiny_model_dir, preference_dir, tmp_path / "dynamic")[0]
    static = _train(tiny_model_dir, preference_dir, tmp_path / "static", dynamic_beta=False)[0]
    assert static["beta/sc_min"] == static["beta/sc_max"] == pytest.approx(0.25)
    assert dynamic["beta/sc_min"] < dynamic["beta/sc_max"]


def test_reference_logps_are_computed_once_per_model_and_data(tiny_model_dir, preference_dir, tmp_path, monkeypatch):
    _train(tiny_model_dir, preference_dir, tmp_path / "first")
    cached = list((tmp_path / "cache").glob("reference-logps-*.pt"))
    assert len(cached) == 1

    def fail(*args, **kwargs):
        raise AssertionError("reference log-probs recomputed")

    monkeypatch.setattr("sherlock.training.reference.compute_reference_logps", fail)
    _train(tiny_model_dir, preference_dir, tmp_path / "second", dynamic_beta=False)
    assert reference_cache_path(tmp_path, tiny_model_dir, preference_dir, DPO_SEQUENCES) != \
        reference_cache_path(tmp_path, tiny_model_dir, preference_dir)  # w/o L_SC: 2 slots, its own cache
    changed = tmp_path / "changed"
    changed.mkdir()
    (changed / "pairs.jsonl").write_text((preference_dir / "pairs.jsonl").read_text().replace("noise", "noise ", 1))
    assert reference_cache_path(tmp_path, tiny_model_dir, changed) != reference_cache_path(
        tmp_path, tiny_model_dir, preference_dir)


def test_training_increases_the_preference_margin(tiny_model_dir, preference_dir, tmp_path):
    logs = _train(tiny_model_dir, preference_dir, tmp_path / "learn", max_steps=6, learning_rate=2e-5,
                  warmup_ratio=0.0, lr_scheduler="constant")
    steps = [entry for entry in logs if "loss" in entry]
    assert steps[0]["rewards/margins"] == pytest.approx(0, abs=1e-3)
    assert all(entry["rewards/margins"] > 0 for entry in steps[1:])
    # at step 0 the policy is the reference (L_DPO = log 2); every later batch is preferred more.
    # (The total loss is not compared: L_SC varies several-fold between batches of different pairs.)
    assert steps[0]["loss/dpo"] == pytest.approx(math.log(2), abs=1e-3)
    assert all(entry["loss/dpo"] < steps[0]["loss/dpo"] for entry in steps[1:])


def test_bad_preference_data(tiny_model_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="no preference pairs"):
        run_train_preferences(TrainPreferencesConfig(model=str(tiny_model_dir), data=str(tmp_path),
                                                       output=str(tmp_path / "o")))
    (tmp_path / "pairs.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="holds no preference pairs"):
        run_train_preferences(TrainPreferencesConfig(model=str(tiny_model_dir), data=str(tmp_path),
                                                       output=str(tmp_path / "o")))
    with pytest.raises(ConfigError, match="loss would be empty"):
        run_train_preferences(TrainPreferencesConfig(model=str(tiny_model_dir), data=str(tmp_path),
                                                       output=str(tmp_path / "o"), use_sc=False, use_dpo=False))
    assert IGNORE_INDEX == torch.nn.CrossEntropyLoss().ignore_index  # the labels' mask is torch's


def test_scl_objective_equals_trl_dpo_with_its_sft_loss(tiny_model_dir, preference_dir, tmp_path):
    """SCL's DPO + 0.1 · SFT(y_w) (per token) against TRL's DPOTrainer with loss_type ["sigmoid", "sft"]."""
    from bench.common import Workspace
    from bench.p2_dpo import compare

    workspace = Workspace(tmp_path, preference_dir, tiny_model_dir, preference_dir)
    with_sft = compare(workspace, batch_size=4, device=torch.device("cpu"), sft_weight=0.1)
    plain = compare(workspace, batch_size=4, device=torch.device("cpu"))
    with torch.no_grad():
        for indices in with_sft.batches[:2]:
            ours, trl = float(with_sft.our_loss(indices)), float(with_sft.trl_loss(indices))
            assert ours == pytest.approx(trl, abs=1e-4)
            assert ours - float(plain.our_loss(indices)) > 0.1  # the SFT term (≈ 0.1 · 6 nats per token) is in


def test_stic_objective_is_dpo_minus_summed_likelihood_over_1024(tiny_model_dir, preference_dir, tmp_path):
    """STIC stage 1 (spec §3): ℓ(0.1·[r(y_w) − r(y_l)]) − Σ log π_θ(y_w) / 1024, from independent log-probs."""
    model, processor = load_vlm(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(1)
        for parameter in model.model.language_model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.02)
    reference, _ = load_vlm(tiny_model_dir, dtype=torch.float32)
    pairs = read_pairs(preference_dir)[:4]
    dataset = PreferenceDataset(pairs, preference_dir, processor, DPO_SEQUENCES)
    batch = PreferenceCollator(processor.tokenizer.pad_token_id)([dataset[i] for i in range(4)])
    config = TrainPreferencesConfig(model="m", data="d", output="o", use_sc=False, dynamic_beta=False, alpha=1.0,
                                      dpo_beta=0.1, sft_weight=1 / 1024).loss()
    with torch.no_grad():
        policy, ref = sequence_logps(model, batch), sequence_logps(reference, batch)
        loss, parts = sherlock_objective(policy, ref, batch["truncation_step"], batch["noise_level"],
                                                    config, labelled_tokens(batch))
    margin = (policy[:, 0] - ref[:, 0]) - (policy[:, 1] - ref[:, 1])
    expected = (torch.log1p(torch.exp(-0.1 * margin)) - policy[:, 0] / 1024).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert parts[-1].tolist() == pytest.approx((-policy[:, 0]).tolist())  # L_SFT reported per pair
    assert abs(policy[:, 0].mean().item()) > 100  # the summed likelihood term is not negligible here
