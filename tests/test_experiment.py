"""The multi-seed experiment's bookkeeping: which recipes may run, and the mean ± sd table."""

import pytest

from sherlock.experiment import ExperimentConfig, results_table, run_experiment


def test_table_has_the_checkpoints_every_seed_has_in_paper_order():
    summaries = [{"scores": {"SCL": [30.0, 20.0], "R0": [31.0, 10.0], "STIC": [10.0, 9.0]}},
                 {"scores": {"SCL": [32.0, 22.0], "R0": [33.0, 12.0]}}]
    table = results_table(summaries, rounds=1).splitlines()
    assert table[0] == "| checkpoint | direct | +SC round 1 |"
    assert table[2:] == ["| R0 | 32.0 ± 1.4 | 11.0 ± 1.4 |", "| SCL | 31.0 ± 1.4 | 21.0 ± 1.4 |"]  # no STIC


@pytest.mark.parametrize("recipes", ["scl", "sherlock,dar", "sherlock,dar,stic", "sherlock,dpo"])
def test_recipes_need_sherlock_first_and_stic_before_dar(recipes, tmp_path):
    with pytest.raises(ValueError, match="recipes must include sherlock"):
        run_experiment(ExperimentConfig(workdir=str(tmp_path), recipes=recipes))
