"""The stage registry: every stage resolves to its config and function, outputs by name, lazy imports."""

import dataclasses
import string
import subprocess
import sys

import pytest

from sherlock.config import ConfigError, uri_fields
from sherlock.stages.registry import STAGES, preset, stage


@pytest.mark.parametrize("name", sorted(STAGES))
def test_each_stage_loads_its_config_and_function_and_names_only_config_fields_in_outputs(name):
    record = stage(name)
    assert dataclasses.is_dataclass(record.config) and callable(record.run)
    assert uri_fields(record.config, "output") == ["output"]
    fields = {f.name for f in dataclasses.fields(record.config)}
    placeholders = {p for path in record.outputs.values() for _, p, _, _ in string.Formatter().parse(path) if p}
    assert placeholders <= fields


def test_outputs_resolve_under_a_path_or_uri_and_unknown_names_are_refused():
    assert STAGES["sample"].output("s3://bucket/run/subsets/", "D_A") == "s3://bucket/run/subsets/D_A"
    assert STAGES["online"].output("/runs/online-2", "model", iteration=2) == "/runs/online-2/iter_2/model"
    with pytest.raises(KeyError, match="rejected"):
        STAGES["sample-rejected"].output("/x", "pairs")
    with pytest.raises(ConfigError, match="unknown stage 'trian'.*'train-preferences'"):
        stage("trian")


def test_a_data_step_imports_no_model_library():
    """A CPU step (sampling subsets) resolves its config without importing torch, transformers or TRL."""
    code = ("import sys; import components.steps; from sherlock.stages.registry import stage; "
            "stage('sample').config; print(sorted({'torch', 'transformers', 'trl'} & set(sys.modules)))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_presets_are_checked_against_their_stage_before_a_pipeline_is_compiled(tmp_path, monkeypatch):
    from sherlock.stages import registry

    assert preset("train-preferences.offline")["sc_beta"] == 0.25  # configs/paper/train-preferences.offline.yaml
    (tmp_path / "paper").mkdir()
    (tmp_path / "paper" / "online.yaml").write_text("num_pairs: 10\nsc_bta: 0.5\n")  # a misspelt β is no silent drop
    (tmp_path / "paper" / "sft.r0.yaml").write_text("epochs: many\n")
    (tmp_path / "paper" / "sample-rejected.yaml").write_text("output: s3://elsewhere\n")
    monkeypatch.setattr(registry, "CONFIGS", tmp_path)
    with pytest.raises(ConfigError, match=r"unknown OnlineConfig field\(s\) \['sc_bta'\]"):
        preset("online")
    with pytest.raises(ConfigError, match="epochs must be a float"):
        preset("sft.r0")
    with pytest.raises(ConfigError, match=r"may not set \['output'\]"):
        preset("sample-rejected")
