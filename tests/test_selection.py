"""Selection on validation data: grid parsing, ranking by the family mean, the tables."""
import json
import types

import pytest

from larq_engrams import experiment, methods, selection


def test_parse_grid_types_values_by_field_and_names_unknown_settings():
    grid = selection.parse_grid("epochs=2,5; learning_rate=0.001,0.005")
    assert grid == [{"epochs": 2, "learning_rate": 0.001}, {"epochs": 2, "learning_rate": 0.005},
                    {"epochs": 5, "learning_rate": 0.001}, {"epochs": 5, "learning_rate": 0.005}]
    assert isinstance(grid[0]["epochs"], int) and isinstance(grid[0]["learning_rate"], float)
    assert selection.parse_grid("") == [{}] and selection.point_name({}) == "defaults"
    assert selection.point_name(grid[1]) == "epochs=2_learning_rate=0.005"
    with pytest.raises(ValueError, match="unknown setting 'lr'"):
        selection.parse_grid("lr=0.1")
    with pytest.raises(ValueError, match="has no values"):
        selection.parse_grid("epochs=")


def test_apply_point_sets_epochs_and_hyperparameters_only():
    config = experiment.ExperimentConfig(epochs=1, hparams=methods.HyperParameters(hidden=(16, 16)))
    new = selection.apply_point(config, {"epochs": 5, "learning_rate": 0.001})
    assert new.epochs == 5 and new.hparams.learning_rate == 0.001 and new.hparams.hidden == (16, 16)
    assert selection.apply_point(config, {}) == config


def test_a_family_is_ranked_by_its_mean_validation_acc_and_runs_never_see_test_data(tmp_path):
    # Validation ACC per (method, epochs), made up so that each method alone would choose
    # differently: a prefers 2 epochs, b 5; their mean prefers 5 (0.5 + 0.9 > 0.6 + 0.3).
    table = {("a", 2): 0.6, ("a", 5): 0.5, ("b", 2): 0.3, ("b", 5): 0.9}
    calls = []

    def runner(config, method, seed, outdir):
        calls.append((config.evaluate_on, config.epochs, method, seed, outdir))
        # each run's own time, as a reused run's result.json has it: here 10 s per epoch
        return types.SimpleNamespace(metrics={"acc": table[method, config.epochs] + 0.01 * seed},
                                     config={"wall_seconds": 10.0 * config.epochs})

    config = experiment.ExperimentConfig(evaluate_on="test")  # replaced: selection reads validation data only
    chosen = selection.select_on_validation(config, ["a", "b"], selection.parse_grid("epochs=2,5"), [0, 1],
                                            str(tmp_path), command="tune", runner=runner)
    assert {c[0] for c in calls} == {"validation"} and len(calls) == 2 * 2 * 2
    assert chosen.chosen == {"epochs": 5}
    assert json.load(open(tmp_path / "chosen.json")) == {"epochs": 5}
    record = json.load(open(tmp_path / "selection.json"))
    assert record["run_seconds"] == pytest.approx(2 * 2 * (20.0 + 50.0))  # 2 methods x 2 seeds per point
    rows = record["rows"]
    assert [r["setting"]["epochs"] for r in rows] == [5, 2]
    assert rows[0]["mean_validation_acc"] == pytest.approx((0.5 + 0.51 + 0.9 + 0.91) / 4)
    assert rows[0]["per_method"] == pytest.approx({"a": 0.505, "b": 0.905})
    assert {c[4] for c in calls} == {str(tmp_path / "point_epochs=2"), str(tmp_path / "point_epochs=5")}
    text = open(tmp_path / "selection.md").read()
    assert "the family a, b" in text and "test split was not read" in text
    assert "| 1 | epochs=5 | 70.5 | 50.5 | 90.5 | — |" in text


def test_selection_needs_a_point():
    with pytest.raises(ValueError, match="no points"):
        selection.select_on_validation(experiment.ExperimentConfig(), "bnn", [], [0], "/tmp/never",
                                       runner=lambda *a: None)
