"""What the Kubeflow components call, run directly: a stage as a step, its outputs by name, the report."""

import json

import pytest

from components.steps import embedded_inputs, evaluation_table_html, stage_step, step_uri
from sherlock.config import ConfigError
from sherlock.stages.registry import STAGES


def test_a_stage_step_writes_under_its_run_and_its_outputs_resolve_through_the_registry(synthetic_data, tmp_path):
    output = stage_step("sample", "subsets", {"sizes": "D_A=5,D_B=7", "seed": 1, "data_file": "data.jsonl"},
                        str(tmp_path / "runs"), "run-1", data=str(synthetic_data.image_root))
    assert output == step_uri(str(tmp_path / "runs"), "run-1", "subsets") == str(tmp_path / "runs/run-1/subsets")
    manifest = json.loads(open(STAGES["sample"].output(output, "manifest")).read())
    assert {name: len(entries) for name, entries in manifest["subsets"].items()} == {"D_A": 5, "D_B": 7}
    for name in ("D_A", "D_B"):
        assert (tmp_path / "runs/run-1/subsets" / name / "data.jsonl").is_file()
        assert STAGES["sample"].output(output, name) == f"{output}/{name}"
    with pytest.raises(ConfigError, match="unknown SampleConfig field"):  # a run parameter is checked at run time
        stage_step("sample", "subsets", {"sizes": "D_A=5", "sead": 1}, str(tmp_path / "runs"), "run-2",
                   data=str(synthetic_data.image_root))


def test_given_inputs_pass_through_untouched(tmp_path):
    given = ("s3://models/llama", "s3://data/llava-cot", "mmstar=s3://bench/MMStar.tsv")
    assert embedded_inputs(*given, output_root=str(tmp_path), pipeline_run_id="r") == given
    assert not any(tmp_path.iterdir())


def test_the_html_report_escapes_what_it_is_given():
    metrics = {"benchmarks": {"<script>x</script>": {"rounds": [{"score": 50.0, "stderr": 5.0, "n": 10}],
                                                       "blind_prior": 40.0}}}
    table = evaluation_table_html(metrics)
    assert "<script>" not in table and "&lt;script&gt;x&lt;/script&gt;" in table
    assert table.count("<tr>") == 2 and "<td>40.0</td>" in table


def test_embedded_family_builds_a_tiny_model_of_that_family_on_the_runs_data(tmp_path):
    """``base_model=embedded:FAMILY`` (a run parameter): a family of the registry, nothing else."""
    from sherlock.models.loading import load_vlm

    base, train, _ = embedded_inputs("embedded:idefics3", "embedded", "embedded", str(tmp_path), "r",
                                     num_items=12, eval_items=4)
    assert base == str(tmp_path / "r/models/base") and train == str(tmp_path / "r/data/train")
    model, processor = load_vlm(base)
    assert type(model).__name__ == "Idefics3ForConditionalGeneration"
    assert type(processor).__name__ == "Idefics3Processor"
    for hostile in ("embedded:../../etc", "embedded:qwen9", "embedded:"):
        with pytest.raises(ValueError, match="unknown model family"):
            embedded_inputs(hostile, "embedded", "embedded", str(tmp_path / "x"), "r", num_items=4, eval_items=4)
    assert not (tmp_path / "x").exists()  # refused before anything was written
