"""Training stages under torchrun (2 CPU processes, gloo), resume after a kill and past half-written
checkpoints, shipped DeepSpeed configs."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sherlock.models.families import FAMILIES
from sherlock.training.settings import TrainSettings
from sherlock.training.setup import training_arguments

REPO = Path(__file__).resolve().parents[2]
CONSTANT_LR = ["--lr-scheduler", "constant", "--warmup-ratio", "0", "--logging-steps", "1", "--learning-rate", "2e-5"]


def _command(tiny_model_dir, preference_dir, output, *extra):
    return ["train-preferences", "--model", str(tiny_model_dir), "--data", str(preference_dir), "--output",
            str(output), "--reference-cache", str(Path(output).parent / "cache"), *CONSTANT_LR, *extra]


def _run(args, **environment):
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"} | environment
    result = subprocess.run([sys.executable, "-m", "sherlock.cli", *args], env=env, capture_output=True, text=True,
                            timeout=600, cwd=REPO)
    assert result.returncode == 0, _failure(result.stderr)
    return result


def _failure(stderr: str) -> str:
    """A failed command's stderr: a rank's fatal error with its threads' stacks (ahead of the long tail of
    extension modules), then the end."""
    fatal = stderr.find("Fatal Python error")
    return (stderr[fatal:fatal + 4000] + "\n[…]\n" if fatal >= 0 else "") + stderr[-3000:]


def test_a_rank_leaves_the_process_group_when_done(monkeypatch, tmp_path):
    """A real gloo group (of one member, as one of two ranks) is destroyed by ``distributed.shutdown``, which
    every rank of ``sherlock <stage>`` calls at the end: gloo's threads holding finished work through the
    interpreter's teardown made a rank abort (SIGABRT) after its stage had succeeded."""
    import torch

    from sherlock import distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    torch.distributed.init_process_group("gloo", store=torch.distributed.FileStore(str(tmp_path / "store"), 1),
                                         rank=0, world_size=1)
    try:
        torch.distributed.all_reduce(torch.ones(2))
        distributed.shutdown()
        assert not torch.distributed.is_initialized()
        distributed.shutdown()  # nothing left to leave
    finally:  # a failure here leaves no group behind for the tests after it
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _losses(output):
    history = json.loads((Path(output) / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


def _same_curve(single: Path, ddp: Path) -> None:
    """The loss curves agree to 1e-3 (relative): DDP averages the two ranks' gradients, so each step
    sums the same terms in another order (float32), and 2 ranks run each forward on half the rows."""
    single, ddp = _losses(single), _losses(ddp)
    assert len(single) == len(ddp) == 3
    assert ddp == pytest.approx(single, rel=1e-3)
    assert single[1] != pytest.approx(single[0], rel=1e-3), "the losses move: the comparison is not trivial"


def test_two_ranks_train_preferences_as_one(tiny_model_dir, preference_dir, tmp_path):
    """L_SC + α·L_DPO with dynamic β: 2 ranks x 2 pairs see the same global batch as 1 rank x 4 pairs
    (the reference log-probs computed sharded); the same losses, rank 0 alone saves the model."""
    _run(_command(tiny_model_dir, preference_dir, tmp_path / "single", "--batch-size", "4", "--max-steps", "3"))
    result = _run(_command(tiny_model_dir, preference_dir, tmp_path / "ddp", "--batch-size", "2", "--max-steps", "3",
                           "--nproc-per-node", "2"))
    assert "rank 1 of world size 2" in result.stderr
    _same_curve(tmp_path / "single", tmp_path / "ddp")
    assert (tmp_path / "ddp" / "model.safetensors").is_file()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_two_ranks_under_zero3_train_as_one_and_save_the_whole_model(family, family_model_dirs, preference_dir,
                                                                     tmp_path):
    """DeepSpeed ZeRO-3 on 2 CPU ranks, every model family: the same losses as 1 rank without DeepSpeed,
    and the saved model is whole (ZeRO-3 partitions the weights: a plain save_pretrained on rank 0 would
    write empty tensors), with every tensor trained. The reference model is loaded before ZeRO-3 is
    configured, whole."""
    import torch

    from sherlock.models.loading import load_vlm

    model_dir = family_model_dirs[family]
    _run(_command(model_dir, preference_dir, tmp_path / "single", "--batch-size", "4", "--max-steps", "3"))
    _run(_command(model_dir, preference_dir, tmp_path / "zero3", "--batch-size", "2", "--max-steps", "3",
                  "--nproc-per-node", "2", "--deepspeed", str(REPO / "configs" / "deepspeed" / "zero3.json")),
         DS_ACCELERATOR="cpu")
    _same_curve(tmp_path / "single", tmp_path / "zero3")
    trained, base = (load_vlm(path)[0].state_dict() for path in (tmp_path / "zero3", model_dir))
    assert {k: v.shape for k, v in trained.items()} == {k: v.shape for k, v in base.items()}
    assert sum(not torch.equal(trained[k], base[k]) for k in base) > len(base) // 2


def test_two_ranks_sft_as_one(tiny_model_dir, subset_dir, tmp_path):
    """Sherlock-SFT's trainer (TRL, assistant-only loss, token mean over the global batch): 2 ranks x 2
    examples reproduce 1 rank x 4."""
    for name, batch, ranks in (("single", "4", "1"), ("ddp", "2", "2")):
        result = _run(["sft", "--model", str(tiny_model_dir), "--data", str(subset_dir), "--output",
                       str(tmp_path / name), "--batch-size", batch, "--max-steps", "3", "--nproc-per-node", ranks,
                       *CONSTANT_LR, "--learning-rate", "1e-3"])
        assert result.stderr.count(f"memory plan (full, DDP, {ranks} GPU x 1 node, {batch} x ") == 1  # rank 0's
    _same_curve(tmp_path / "single", tmp_path / "ddp")


def test_two_ranks_train_rl_each_on_whole_groups(tiny_model_dir, subset_dir, tmp_path):
    """Octopus Stage I on 2 ranks: each generates and recombines its own whole groups (the trainer checks that
    a group's rows are consecutive and local), TRL's advantage is gathered over both, and the group statistics
    are summed over the ranks: a generation batch counts twice one rank's rollouts."""
    for name, ranks in (("single", 1), ("ddp", 2)):
        result = _run(["train-rl", "--model", str(tiny_model_dir), "--data", str(subset_dir), "--output",
                       str(tmp_path / name), "--max-steps", "2", "--batch-size", "8", "--steps-per-generation", "1",
                       "--generations", "4", "--max-completion-length", "12", "--nproc-per-node", str(ranks)])
        assert (f"rank 1 of world size {ranks}" in result.stderr) == (ranks == 2)
        steps = [json.loads(line) for line in (tmp_path / name / "rewards.jsonl").read_text().splitlines()]
        assert [s["octopus/rollouts"] for s in steps] == [4.0 * ranks] * 2, name
    assert (tmp_path / "ddp" / "model.safetensors").is_file()


def test_killed_run_resumes_from_its_last_checkpoint(tiny_model_dir, preference_dir, tmp_path):
    args = ["--batch-size", "2", "--max-steps", "6", "--save-steps", "2"]
    _run(_command(tiny_model_dir, preference_dir, tmp_path / "straight", *args))

    interrupted = tmp_path / "interrupted"
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "sherlock.cli",
                                *_command(tiny_model_dir, preference_dir, interrupted, *args)],
                               env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = interrupted / "checkpoint-4" / "trainer_state.json"
    deadline = time.time() + 300
    while not marker.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (interrupted / "trainer_state.json").exists() and not (interrupted / "checkpoint-6").exists()

    resumed = _run(_command(tiny_model_dir, preference_dir, interrupted, *args))
    assert "resuming from" in resumed.stderr and "checkpoint-4" in resumed.stderr
    assert _losses(interrupted) == pytest.approx(_losses(tmp_path / "straight"), rel=1e-5)

    # saves cut short (a kill while writing): checkpoint-6's weights half written, a checkpoint-5 without
    # its trainer state; the run resumes from checkpoint-4, the newest complete one, with the same losses
    cut = tmp_path / "cut"
    for step in (4, 6):
        shutil.copytree(tmp_path / "straight" / f"checkpoint-{step}", cut / f"checkpoint-{step}")
    shutil.copytree(cut / "checkpoint-4", cut / "checkpoint-5")
    (cut / "checkpoint-5" / "trainer_state.json").unlink()
    weights = cut / "checkpoint-6" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    resumed = _run(_command(tiny_model_dir, preference_dir, cut, *args))
    assert "checkpoint-6: incomplete, model.safetensors unreadable" in resumed.stderr
    assert "checkpoint-5: incomplete, trainer_state.json unreadable" in resumed.stderr
    assert f"resuming from {cut / 'checkpoint-4'}" in resumed.stderr
    assert _losses(cut) == pytest.approx(_losses(tmp_path / "straight"), rel=1e-5)


@pytest.mark.parametrize("name, stage", [("zero2.json", 2), ("zero3.json", 3), ("zero3_offload.json", 3)])
def test_deepspeed_configs_fill_from_the_training_settings(name, stage, tmp_path):
    path = REPO / "configs" / "deepspeed" / name
    args = training_arguments(TrainSettings(deepspeed=str(path), batch_size=3, grad_accum=2), tmp_path)
    config = args.hf_deepspeed_config
    config.trainer_config_process(args)
    assert config.config["zero_optimization"]["stage"] == stage
    assert config.config["train_micro_batch_size_per_gpu"] == 3
    assert config.config["gradient_accumulation_steps"] == 2


def test_sft_trainer_resume_loads_the_checkpoint_weights(tiny_model_dir, synthetic_data, tmp_path):
    """The stock Trainer path matches no Mllama key (converted names); ours restores every weight."""
    import torch
    from trl import SFTConfig

    from sherlock.models.loading import load_vlm
    from sherlock.training.sft import VLMSFTTrainer, examples_from_records, sft_dataset

    model, processor = load_vlm(tiny_model_dir)
    args = training_arguments(TrainSettings(), tmp_path, SFTConfig, assistant_only_loss=True)
    trainer = VLMSFTTrainer(model=model, args=args, processing_class=processor,
                            train_dataset=sft_dataset(examples_from_records(synthetic_data.records[:2],
                                                                            synthetic_data.image_root)))
    saved = {name: p.detach().clone() for name, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    trainer._load_from_checkpoint(str(tiny_model_dir))
    assert all(torch.equal(saved[name], p) for name, p in model.named_parameters())


def test_lora_under_zero3_is_refused_before_training():
    """The LoRA adapters are merged into the saved model; ZeRO-3's partitioned weights cannot be merged."""
    from sherlock.config import ConfigError

    settings = TrainSettings(finetuning="lora", deepspeed=str(REPO / "configs" / "deepspeed" / "zero3.json"))
    with pytest.raises(ConfigError, match="configs/deepspeed/zero2.json or without DeepSpeed"):
        settings.check_training()
    TrainSettings(finetuning="lora", deepspeed=str(REPO / "configs" / "deepspeed" / "zero2.json")).check_training()
