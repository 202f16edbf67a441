import math

import pytest
import torch

from sherlock import losses


def test_dynamic_beta_corners_and_range():
    beta = losses.dynamic_beta(torch.tensor([1, 1, 4, 4]), torch.tensor([0.0, 1.0, 0.0, 1.0]))
    expected = [1 / (4 * (0.5 + 0.25**0.5)), 1 / (4 * (0.5 + 0.25)), 1 / (4 * 1.5), 1 / (4 * 1.5)]
    assert beta.tolist() == pytest.approx(expected, abs=1e-12)
    assert beta.max().item() == pytest.approx(1 / 3)  # i = 1, ε = 1
    assert beta.min().item() == pytest.approx(1 / 6)  # i = n
    grid = losses.dynamic_beta(torch.arange(1, 5).repeat_interleave(11), torch.linspace(0, 1, 11).repeat(4))
    assert ((grid >= 1 / 6 - 1e-12) & (grid <= 1 / 3 + 1e-12)).all()


def test_beta_is_larger_for_early_truncation_and_strong_noise():
    steps = losses.dynamic_beta(torch.tensor([1, 2, 3]), torch.tensor([0.5, 0.5, 0.5]))
    assert steps[0] > steps[1] > steps[2]
    noise = losses.dynamic_beta(torch.tensor([2, 2]), torch.tensor([0.1, 0.9]))
    assert noise[1] > noise[0]


def test_static_beta_switch_and_code_base():
    static = losses.dynamic_beta(torch.tensor([1, 4]), torch.tensor([0.3, 0.9]), base=0.1, dynamic=False)
    assert static.tolist() == pytest.approx([0.1, 0.1])
    code = losses.dynamic_beta(torch.tensor([2]), torch.tensor([0.2]), base=0.025)
    assert code.item() == pytest.approx(0.025 / (0.5 + 0.5**0.6))


def test_beta_rejects_out_of_range_inputs():
    with pytest.raises(ValueError, match="truncation step"):
        losses.dynamic_beta(torch.tensor([0]), torch.tensor([0.5]))
    with pytest.raises(ValueError, match="noise level"):
        losses.dynamic_beta(torch.tensor([2]), torch.tensor([1.5]))


def test_dpo_loss_hand_computed():
    loss = losses.dpo_loss(torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 0.0]), 0.5)
    assert loss.tolist() == pytest.approx([math.log(1 + math.exp(-1.0)), math.log(2)])


def test_self_correction_loss_hand_computed():
    # context R(Y^l): v = β(2 − 0) = 1, u = β(1 − 1) = 0 → (1 − 1 − 0)² = 0
    # context R(Y^w): v = β(0 − 2) = −1, u = β(0 − 0) = 0 → (1 + 1)² = 4
    args = [torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]]), torch.tensor([[1.0, 0.0]]),
            torch.tensor([[1.0, 0.0]])]
    assert losses.self_correction_loss(*args, beta=0.5).tolist() == pytest.approx([4.0])
    # all log-ratios zero: v = u = 0 → 1 + 1
    zero = torch.zeros(3, 2)
    assert losses.self_correction_loss(zero, zero, zero, zero, 0.2).tolist() == pytest.approx([2.0] * 3)


def test_sherlock_loss_terms_and_ablations():
    sc, dpo = torch.tensor([2.0]), torch.tensor([0.8])
    assert losses.sherlock_loss(sc, dpo).item() == pytest.approx(2.0 + 0.25 * 0.8)
    assert losses.sherlock_loss(sc, dpo, use_dpo=False).item() == pytest.approx(2.0)
    assert losses.sherlock_loss(sc, dpo, use_sc=False, alpha=0.5).item() == pytest.approx(0.4)
    with pytest.raises(ValueError):
        losses.sherlock_loss(sc, dpo, use_sc=False, use_dpo=False)


def test_sft_loss_sum_and_batch_token_mean():
    logps, tokens = torch.tensor([-30.0, -10.0]), torch.tensor([10, 30])
    assert losses.sft_loss(logps).tolist() == [30.0, 10.0]
    assert losses.sft_loss(logps, tokens).tolist() == pytest.approx([1.0, 1.0])  # 40 nats over 40 tokens


def _sherlock_objective(policy: torch.Tensor, reference: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """policy/reference: (batch, 10) summed log-probs in the order [DPO w, DPO l, 4 × R(Y^l), 4 × R(Y^w)]."""
    r = losses.log_ratio(policy, reference)
    sc = r[:, 2:].reshape(-1, 2, 4).transpose(1, 2)  # (batch, 4 kinds, 2 contexts)
    l_sc = losses.self_correction_loss(sc[:, 0], sc[:, 1], sc[:, 2], sc[:, 3], beta)
    return losses.sherlock_loss(l_sc, losses.dpo_loss(r[:, 0], r[:, 1], beta))


def test_gradients_push_chosen_up_and_rejected_down():
    torch.manual_seed(0)
    policy = torch.randn(4, 10, dtype=torch.float64, requires_grad=True)
    reference = torch.randn(4, 10, dtype=torch.float64)
    beta = losses.dynamic_beta(torch.tensor([1, 2, 3, 4]), torch.rand(4, dtype=torch.float64))
    _sherlock_objective(policy, reference, beta).sum().backward()
    grad = policy.grad
    # descent direction is −grad: chosen DPO log-prob up, rejected down
    assert (grad[:, 0] < 0).all() and (grad[:, 1] > 0).all()
    # wherever (1 − v − u) > 0, Y^w suffixes go up, Y^l suffixes go down in both contexts
    policy2 = reference.clone().requires_grad_(True)  # r = 0 → v = u = 0, residual 1 > 0
    _sherlock_objective(policy2, reference, beta).sum().backward()
    sc = policy2.grad[:, 2:].reshape(-1, 2, 4)
    assert (sc[:, :, 0] < 0).all() and (sc[:, :, 2] < 0).all()  # Y^w suffix given either prefix
    assert (sc[:, :, 1] > 0).all() and (sc[:, :, 3] > 0).all()  # Y^l suffix given either prefix


def test_per_sample_beta_over_a_batch_equals_each_sample_alone():
    torch.manual_seed(1)
    policy, reference = torch.randn(6, 10, dtype=torch.float64), torch.randn(6, 10, dtype=torch.float64)
    beta = losses.dynamic_beta(torch.tensor([1, 2, 3, 4, 1, 3]), torch.rand(6, dtype=torch.float64))
    batched = _sherlock_objective(policy, reference, beta)
    alone = torch.cat([_sherlock_objective(policy[i : i + 1], reference[i : i + 1], beta[i : i + 1]) for i in range(6)])
    torch.testing.assert_close(batched, alone, rtol=0, atol=1e-12)


def test_dpo_loss_matches_trl_dpo_trainer(tiny_tokenizer, tmp_path):
    """L_DPO with a static β equals TRL's sigmoid DPO loss on the same model, batch and reference."""
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import DPOConfig, DPOTrainer

    tok = tiny_tokenizer
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    reference = LlamaForCausalLM(config).eval()
    policy = LlamaForCausalLM(config)
    policy.load_state_dict(reference.state_dict())
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    data = Dataset.from_dict({
        "prompt": ["How many red shapes?", "What colour is the circle?", "Is the square above?", "How many?"],
        "chosen": ["<CONCLUSION>2</CONCLUSION>", "It is red.", "yes", "3 shapes"],
        "rejected": ["<CONCLUSION>5</CONCLUSION>", "It is blue, large.", "no", "1"],
    })
    args = DPOConfig(output_dir=str(tmp_path), beta=0.1, per_device_train_batch_size=4, report_to=[],
                     use_cpu=True, bf16=False, loss_type=["sigmoid"])
    trainer = DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=data, processing_class=tok)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    trl_loss = trainer.compute_loss(trainer.model, batch)

    def summed_logps(model):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        token_logps = torch.log_softmax(logits.float(), -1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
        return (token_logps * batch["completion_mask"][:, 1:]).sum(-1)

    with torch.no_grad():
        pol, ref = summed_logps(trainer.model), summed_logps(reference)
    chosen, rejected = losses.log_ratio(pol, ref).chunk(2)
    ours = losses.dpo_loss(chosen, rejected, 0.1).mean()
    assert abs(ours.item() - math.log(2)) > 1e-4  # policy differs from the reference
    assert ours.item() == pytest.approx(trl_loss.item(), abs=1e-6)
