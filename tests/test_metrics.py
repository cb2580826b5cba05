"""Metrics against matrices worked out by hand."""
import numpy as np
import pytest

from larq_engrams import metrics

# Three tasks. Rows: after training task t; columns: tested on task k.
R = [
    [0.90, 0.10, 0.20],
    [0.60, 0.95, 0.30],
    [0.70, 0.50, 0.80],
]
B = [0.10, 0.12, 0.15]  # untrained model


def test_acc():
    assert metrics.average_accuracy(R) == pytest.approx((0.70 + 0.50 + 0.80) / 3)


def test_bwt():
    # ((0.70 - 0.90) + (0.50 - 0.95)) / 2 = -0.325
    assert metrics.backward_transfer(R) == pytest.approx(-0.325)


def test_forgetting_uses_the_best_earlier_accuracy():
    # Task 0: max(0.90, 0.60) - 0.70 = 0.20; task 1: max(0.95) - 0.50 = 0.45 -> 0.325.
    assert metrics.forgetting(R) == pytest.approx(0.325)
    # Task 0 peaks after task 1 here, so forgetting differs from -BWT:
    # task 0: max(0.5, 0.8) - 0.6 = 0.2; task 1: max(0.1, 0.9) - 0.7 = 0.2 -> 0.2,
    # while BWT = ((0.6 - 0.5) + (0.7 - 0.9)) / 2 = -0.05.
    R3 = [[0.5, 0.1, 0.0], [0.8, 0.9, 0.1], [0.6, 0.7, 0.9]]
    assert metrics.forgetting(R3) == pytest.approx(0.2)
    assert metrics.backward_transfer(R3) == pytest.approx(-0.05)
    # The max includes rows before the task was trained (docs/method.md, section 6): here row 0.
    R4 = [[0.5, 0.6, 0.0], [0.4, 0.3, 0.1], [0.4, 0.3, 0.9]]
    # task 0: max(0.5, 0.4) - 0.4 = 0.1; task 1: max(0.6, 0.3) - 0.3 = 0.3 -> 0.2.
    assert metrics.forgetting(R4) == pytest.approx(0.2)


def test_fwt():
    # ((0.10 - 0.12) + (0.30 - 0.15)) / 2 = 0.065
    assert metrics.forward_transfer(R, B) == pytest.approx(0.065)
    with pytest.raises(ValueError, match="baseline"):
        metrics.forward_transfer(R, [0.1, 0.1])


def test_average_incremental_accuracy():
    # (0.90 + (0.60 + 0.95)/2 + (0.70 + 0.50 + 0.80)/3) / 3
    expected = (0.90 + 0.775 + 2.0 / 3) / 3
    assert metrics.average_incremental_accuracy(R) == pytest.approx(expected)


def test_learning_accuracy_is_the_mean_of_the_diagonal():
    # (0.90 + 0.95 + 0.80) / 3: each task right after it was trained.
    assert metrics.learning_accuracy(R) == pytest.approx(2.65 / 3)
    # Forgetting, not learning accuracy, sees that task 1 dropped to 0.50.
    assert metrics.learning_accuracy([[0.9, 0.0], [0.1, 0.9]]) == pytest.approx(0.9)
    assert metrics.summarize(R, B)["learning_acc"] == pytest.approx(2.65 / 3)


def test_single_task_and_bad_shapes():
    assert metrics.average_accuracy([[0.8]]) == 0.8
    assert np.isnan(metrics.backward_transfer([[0.8]]))
    with pytest.raises(ValueError, match="square"):
        metrics.average_accuracy([[0.1, 0.2]])
    with pytest.raises(ValueError, match="missing"):
        metrics.average_accuracy([[0.1, np.nan], [np.nan, 0.3]])


def test_mean_and_sem():
    mean, sem = metrics.mean_and_sem([0.2, 0.4, 0.6])
    # s = 0.2 (ddof 1), sem = 0.2 / sqrt(3)
    assert mean == pytest.approx(0.4) and sem == pytest.approx(0.2 / np.sqrt(3))
    assert metrics.mean_and_sem([0.5]) == (0.5, 0.0)


def test_summarize():
    s = metrics.summarize(R, B)
    assert set(s) == {"acc", "bwt", "forgetting", "avg_incremental_acc", "learning_acc", "fwt"}
    assert s["bwt"] == pytest.approx(-0.325)


def test_one_value_has_no_spread_printed():
    from larq_engrams.metrics import format_mean_and_sem

    assert format_mean_and_sem((0.966, 0.0), 1) == "96.6"
    assert format_mean_and_sem((0.966, 0.0012), 3) == "96.6 ± 0.1"
    assert format_mean_and_sem((0.0, 0.0), 3) == "0.0 ± 0.0"  # measured over seeds: shown
