from pathlib import Path

import pytest
import yaml

from sherlock.cli import build_parser
from sherlock.config import EXTENDS, ConfigError, config_from_args, dump_config, load_config, read_settings
from sherlock.stages.build_preferences import BuildPreferencesConfig
from sherlock.stages.registry import stage
from sherlock.stages.sft import SFTStageConfig
from sherlock.stages.train_preferences import TrainPreferencesConfig

REQUIRED = {"model": "m", "data": "d", "output": "o"}


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "stage.yaml"
    path.write_text("model: m\ndata: d\noutput: o\nlearning_rate: 1.0e-4\nepochs: 2\nuse_sc: false\n")
    config = load_config(TrainPreferencesConfig, path, {"epochs": "3", "alpha": 1})
    assert (config.learning_rate, config.epochs, config.use_sc, config.alpha) == (1e-4, 3.0, False, 1.0)
    assert config.sc_beta == 0.25 and config.dynamic_beta


def test_dump_and_reload_round_trip(tmp_path):
    config = load_config(SFTStageConfig, overrides=REQUIRED | {"rejected": "r.jsonl", "finetuning": "lora"})
    dump_config(config, tmp_path / "c.yaml")
    assert load_config(SFTStageConfig, tmp_path / "c.yaml") == config


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"learning_rat": 1}, "unknown"),
        ({"epochs": "many"}, "must be a float"),
        ({"use_sc": "maybe"}, "true or false"),
        ({"model": None}, "must not be empty"),
    ],
)
def test_bad_values_are_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TrainPreferencesConfig, overrides=REQUIRED | overrides)


def test_missing_required_field():
    with pytest.raises(ConfigError, match="needs output"):
        load_config(SFTStageConfig, overrides={"model": "m", "data": "d"})


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"use_sc": False, "use_dpo": False}, "loss would be empty"),
        ({"finetuning": "qlora"}, "finetuning must be"),
        ({"freeze_vision": True, "freeze_projector": True, "freeze_language": True}, "nothing to train"),
        ({"finetuning": "lora", "freeze_language": True}, "contradicts"),
        ({"sc_beta": 0}, "sc_beta must be positive"),
    ],
)
def test_inconsistent_training_configs(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TrainPreferencesConfig, overrides=REQUIRED | overrides).check()


def test_perturbation_settings_are_checked():
    with pytest.raises(ConfigError, match="not available in the released scheme"):
        load_config(BuildPreferencesConfig, overrides=REQUIRED | {"scheme": "released", "truncation_steps": "4"}
                    ).check_perturbation()
    with pytest.raises(ConfigError, match="comma-separated"):
        load_config(BuildPreferencesConfig, overrides=REQUIRED | {"truncation_steps": "one"}).check_perturbation()


def test_cli_flags_override_the_yaml(tmp_path):
    path = tmp_path / "stage.yaml"
    path.write_text("model: m\ndata: d\noutput: o\nalpha: 0.5\nbatch_size: 2\n")
    args = build_parser().parse_args(["train-preferences", "--config", str(path), "--alpha", "0.1"])
    config = config_from_args(TrainPreferencesConfig, args)
    assert (config.alpha, config.batch_size) == (0.1, 2)


REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("preset", sorted(REPO.glob("configs/*/*.yaml")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_presets_load_and_pass_their_checks(preset, monkeypatch):
    """Every preset is named ``<stage>[.<variant>]`` and loads into its stage's config (``deploy``: DeployConfig)."""
    monkeypatch.chdir(REPO)  # the presets name DeepSpeed configs relative to the repository root
    from sherlock.serving.deploy import DeployConfig
    from sherlock.stages.evaluate import EvaluateConfig
    from sherlock.stages.scl_pairs import SCLPairsConfig

    name = preset.stem.split(".")[0]
    cls = DeployConfig if name == "deploy" else stage(name).config
    required = {"model": "m", "output": "o", "benchmarks": "b=x"} if cls is EvaluateConfig else REQUIRED
    if cls is DeployConfig:
        required = {"model": "models:/m@champion", "output": "o"}
    config = load_config(cls, preset, required)
    for check in ("check_training", "check_perturbation", "check_rl", "check_protocol") + (
            ("check",) if cls is SCLPairsConfig else ()):
        if hasattr(config, check):
            getattr(config, check)()
    if preset.parent.name == "released" and preset.stem == "build-preferences":
        assert (config.scheme, config.legacy_uint8_noise) == ("released", True)


def test_a_settings_file_extends_another_of_its_folder_or_a_sibling_folder(tmp_path):
    (tmp_path / "paper").mkdir()
    (tmp_path / "released").mkdir()
    (tmp_path / "paper" / "train-preferences.offline.yaml").write_text("alpha: 0.25\nbatch_size: 1\nsc_beta: 0.25\n")
    (tmp_path / "paper" / "online.yaml").write_text("extends: train-preferences.offline\nbatch_size: 4\n")
    (tmp_path / "released" / "online.yaml").write_text("extends: paper/online\nsc_beta: 0.025\n")
    assert read_settings(tmp_path / "released" / "online.yaml") == {"alpha": 0.25, "batch_size": 4, "sc_beta": 0.025}
    config = load_config(TrainPreferencesConfig, tmp_path / "released" / "online.yaml", REQUIRED)
    assert (config.alpha, config.batch_size, config.sc_beta) == (0.25, 4, 0.025)
    args = build_parser().parse_args(["train-preferences", "--config", str(tmp_path / "paper" / "online.yaml")]
                                     + [f"--{key}={value}" for key, value in REQUIRED.items()])
    assert config_from_args(TrainPreferencesConfig, args).batch_size == 4  # the CLI reads the same chain


@pytest.mark.parametrize(("text", "message"), [
    ("extends: ../../etc/passwd\n", "names no settings file"),  # never a path out of the configs
    ("extends: missing\n", "names no settings file"),
    ("extends: 3\n", "names no settings file"),
    ("extends: b\n", r"circle: a.yaml -> b.yaml -> a.yaml"),
])
def test_a_bad_extends_is_refused_with_its_file(tmp_path, text, message):
    (tmp_path / "a.yaml").write_text(text)
    (tmp_path / "b.yaml").write_text("extends: a\n")
    with pytest.raises(ConfigError, match=message):
        read_settings(tmp_path / "a.yaml")


@pytest.mark.parametrize("preset", sorted(REPO.glob("configs/*/*.yaml")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_shipped_preset_repeats_what_its_base_already_sets(preset):
    own = yaml.safe_load(preset.read_text()) or {}
    if EXTENDS not in own:
        return
    base = own[EXTENDS]
    inherited = read_settings((preset.parent.parent if "/" in base else preset.parent) / f"{base}.yaml")
    repeated = {key for key, value in own.items() if key in inherited and inherited[key] == value}
    assert not repeated, f"{preset} repeats {sorted(repeated)} of {base}"
