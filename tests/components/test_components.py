"""The components as kubeflow/pipelines-components lays them out: a folder each, a README from the code,
and their Python functions run directly (``.python_func``; kfp.local runs of whole pipelines are in
tests/pipelines)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import components
from components import COMPONENTS, component, readme
from components.prepare_inputs import prepare_inputs
from components.sample import sample

ROOT = Path(components.__file__).resolve().parent


def test_every_component_has_its_folder_and_an_up_to_date_readme():
    folders = {path.parent.name for path in ROOT.glob("*/component.py")}
    assert folders == set(COMPONENTS) and len(folders) == 15
    assert readme.main(["--check"]) == 0
    text = readme.readme("sample_rejected")
    assert "sample Y^l from R0 on D_B" in text and "Returns: `str`." in text
    assert "| `settings` | `dict` | The stage's config fields (``sherlock <stage> --help``)" in text  # from Args:
    assert "Args:" not in text
    assert "| `d_a` | `str` |" in readme.readme("sample")  # a NamedTuple's outputs are listed


def test_every_compiled_input_says_what_it_means():
    """KFP compiles a component's ``Args:`` into its input descriptions: the UI shows them beside each input."""
    for recipe in ("sherlock", "scl", "stic", "octopus"):
        spec = next(yaml.safe_load_all((ROOT.parent / "pipelines" / f"{recipe}.yaml").read_text()))
        for name, definition in spec["components"].items():
            inputs = definition.get("inputDefinitions", {})
            for kind in ("parameters", "artifacts"):
                for key, value in inputs.get(kind, {}).items():
                    if not name.startswith("comp-condition"):
                        assert value.get("description"), f"{recipe}.yaml {name}: input {key} has no description"


def test_components_are_found_by_name_and_a_running_step_needs_no_authoring_dsl():
    """KFP's executor sets ``_KFP_RUNTIME=true`` and then provides only the run-time part of ``kfp.dsl``
    (no ``dsl.component``): what a component's body imports must not define components."""
    assert component("sample") is sample and set(COMPONENTS) >= {"sft", "deploy"}
    with pytest.raises(KeyError, match="no component 'sfft'"):
        component("sfft")
    code = "import components.steps, kfp.dsl, sys; print(hasattr(kfp.dsl, 'component'))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT.parent,
                         env=os.environ | {"_KFP_RUNTIME": "true"})
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "False"  # the run-time DSL indeed lacks it


def test_a_readme_that_drifts_from_its_component_fails_the_check(tmp_path, monkeypatch):
    for name in COMPONENTS:
        (tmp_path / name).mkdir()
        (tmp_path / name / "README.md").write_text(readme.readme(name))
    (tmp_path / "deploy" / "README.md").write_text("# deploy\n")
    monkeypatch.setattr(readme, "ROOT", tmp_path)
    assert readme.main(["--check"]) == 1


def test_sample_runs_as_a_python_function(synthetic_data, tmp_path):
    d_a, d_b, d_u = sample.python_func(
        data=str(synthetic_data.image_root), sizes="D_A=4,D_B=4,D_U=4", seed=0, output_root=str(tmp_path),
        pipeline_run_id="run")
    assert [Path(uri).name for uri in (d_a, d_b, d_u)] == ["D_A", "D_B", "D_U"]
    assert all((Path(uri) / "data.jsonl").is_file() for uri in (d_a, d_b, d_u))


def test_prepare_inputs_passes_given_uris_through(tmp_path):
    given = ("s3://m/base", "s3://d/train", "mmstar=s3://b/MMStar.tsv")
    assert tuple(prepare_inputs.python_func(*given, output_root=str(tmp_path), pipeline_run_id="r",
                                                       seed=0)) == given


def test_sample_runs_under_kfp_local(synthetic_data, tmp_path, monkeypatch):
    """The component as KFP runs it: kfp.local executes its compiled spec in a subprocess."""
    from kfp import local
    from kfp.local import config

    monkeypatch.setattr(config.LocalExecutionConfig, "instance", None)  # undone after the test
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
    task = sample(data=str(synthetic_data.image_root), sizes="D_A=3,D_B=5", seed=2,
                                  output_root=str(tmp_path / "out"), pipeline_run_id="local")
    assert task.outputs["d_a"] == str(tmp_path / "out/local/subsets/D_A")
    assert len((Path(task.outputs["d_b"]) / "data.jsonl").read_text().splitlines()) == 5
