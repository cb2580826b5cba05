"""What a user sees: progress lines, printed and plotted accuracy matrices, summaries, files."""
import dataclasses
import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

from larq_engrams import benchmarks as B
from larq_engrams import experiment
from larq_engrams.models import mlp
from larq_engrams.plots import plot_accuracy_matrix, plot_long_sequence, plot_task_accuracies
from larq_engrams.training import ContinualResult, ContinualTrainer, write_atomically

R = np.array([[0.995, 0.0, np.nan], [0.9, 1.0, 0.0], [0.8, 0.5, 0.97]])


def result(R=R, method="engram_bnn", runs_before=0, state_bytes=None):
    memory = {"peak_rss_bytes": 700 * 2**20}
    if state_bytes is not None:
        memory["state_bytes"] = state_bytes
    if runs_before is not None:  # None: a result saved before the count existed
        memory["runs_before_in_process"] = runs_before
    return ContinualResult.from_matrix(
        R, [0.1] * len(R), task_seconds=[1.0] * len(R), memory=memory,
        config={"method": {"name": method}, "scenario": {"name": "split_mnist", "setting": "class", "seed": 3,
                                                         "source": "bundled"}},
        environment={})


def test_progress_lines_name_tasks_by_their_id_and_count_from_one(capsys):
    scenario = B.split_mnist("class", source="bundled", batch_size=500).take(2)
    ContinualTrainer(mlp(scenario.input_shape, 10, hidden=(8,)), "adam", verbose=1, jit_compile=False).fit(scenario)
    out = capsys.readouterr().out
    for line in ("task 0 (1 of 2), epoch 1/1", "task 1 (2 of 2), epoch 1/1", "task 0 (1 of 2) done in",
                 "task 1 (2 of 2) done in"):
        assert line in out
    assert "task 2" not in out and "task 1/2" not in out


def test_printed_matrix_marks_untrained_tasks():
    lines = result().format_matrix().splitlines()
    assert lines[1].split()[2:] == ["99.5", "·", "·"]  # k > t: not trained yet, never "0.0"
    assert lines[2].split()[2:] == ["90.0", "100.0", "·"]
    assert lines[3].split()[2:] == ["80.0", "50.0", "97.0"]


def test_fwt_is_printed_only_where_it_means_something():
    assert "FWT" not in result().format_matrix()  # class-IL: no task's classes before it is trained
    domain = result()
    domain.config["scenario"]["setting"] = "domain"
    assert "FWT" in domain.format_matrix()


def test_accuracy_matrix_plot_names_the_run_uses_percent_and_marks_untrained_cells():
    label = result().label
    assert label == "engram_bnn · split_mnist class-IL · seed 3"
    figure = plot_accuracy_matrix(R, label=label)
    ax, bar = figure.axes
    assert label in ax.get_title() and "(%)" in ax.get_title()
    assert bar.get_ylabel() == "accuracy (%)" and bar.get_ylim() == (0.0, 100.0)
    texts = {(round(t.get_position()[0]), round(t.get_position()[1])): t for t in ax.texts}
    assert texts[(0, 0)].get_text() == "99.5"  # not rounded up to 100
    assert texts[(1, 1)].get_text() == "100"
    assert (1, 0) not in texts and (2, 0) not in texts and (2, 1) not in texts  # k > t: blank, never "0.0"
    assert texts[(0, 1)].get_fontsize() >= 9  # readable at the saved size
    assert "ACC 75.7 %" in ax.get_title()  # mean of (80, 50, 97)
    hatched = [p for p in ax.patches if p.get_hatch()]
    assert len(hatched) == 3  # the cells above the diagonal
    assert "not trained yet" in ax.get_xlabel()


def test_task_accuracy_plot_is_in_percent():
    ax = plot_task_accuracies(R, label="bnn · x · seed 0").axes[0]
    low, high = ax.get_ylim()
    assert ax.get_ylabel() == "accuracy (%)" and 40.0 < low < 45.0 and 100.0 < high <= 102.0  # 50 % is the lowest
    first_task = ax.lines[0].get_ydata()
    np.testing.assert_allclose(first_task, [99.5, 90.0, 80.0])
    assert "bnn · x · seed 0" in ax.get_title()
    legend = ax.get_legend().get_window_extent()
    figure = ax.figure
    figure.canvas.draw()
    assert legend.x0 >= ax.get_window_extent().x1  # beside the axes, not over the data


def test_task_accuracy_plot_draws_0_percent_whole():
    low, _ = plot_task_accuracies(np.array([[0.99, 0.0], [0.0, 1.0]])).axes[0].get_ylim()
    assert -3.0 < low < 0.0


def test_task_accuracy_plot_zooms_onto_close_lines():
    close = np.array([[0.99, 0.0], [0.93, 0.995]])
    low, high = plot_task_accuracies(close).axes[0].get_ylim()
    assert 85.0 < low < 90.0 and high > 100.0  # 93-100 % spread over the axis, not squeezed


def test_saved_files_are_readable_by_others(tmp_path):
    old = os.umask(0o022)
    try:
        paths = result().save(str(tmp_path))
        write_atomically(str(tmp_path / "state.json"), "{}")
    finally:
        os.umask(old)
    for path in [*paths.values(), str(tmp_path / "state.json")]:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644, path


def test_summary_memory_column_says_when_a_process_was_shared():
    summary = experiment.summarize({"engram_bnn": [result()], "bnn": [result(method="bnn", runs_before=1)],
                                    "si": [result(method="si"), result(method="si", runs_before=None)]})
    rows = {line.split(" | ")[0][2:]: line for line in experiment.summary_table(summary, "t").splitlines()
            if line.startswith("| ")}
    assert "peak RSS MiB (own process)" in rows["method"]
    assert "| 700 |" in rows["engram_bnn"]
    assert "— (shared process)" in rows["bnn"]
    assert "| 700 (process not recorded) |" in rows["si"]


def test_summary_shows_the_bytes_a_method_keeps_and_a_dash_where_a_seed_lacks_them():
    kept = {"learn": 3 * 2**20, "predict": 2**19}
    summary = experiment.summarize({"er": [result(method="er", state_bytes=kept)] * 2,
                                    "ewc": [result(method="ewc", state_bytes=kept), result(method="ewc")]})
    assert summary["er"]["state_bytes"] == kept and summary["ewc"]["state_bytes"] is None
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in experiment.summary_table(summary, "t").splitlines()
            if line.startswith("| ")}
    column = rows["method"].index("kept MiB (learn / predict)")
    assert rows["er"][column] == "3.00 / 0.50"
    assert rows["ewc"][column] == "—"


def test_memory_records_how_many_runs_shared_the_process(tmp_path):
    config = experiment.ExperimentConfig(num_tasks=1, epochs=1, batch_size=500, source="bundled",
                                         hparams=experiment.methods.HyperParameters(hidden=(8,)), jit_compile=False)
    first = experiment.run_experiment(config, "finetune", 0, str(tmp_path / "a"), verbose=0)
    second = experiment.run_experiment(config, "finetune", 0, str(tmp_path / "b"), verbose=0)
    assert second.memory["runs_before_in_process"] == first.memory["runs_before_in_process"] + 1
    assert not (tmp_path / "a" / "finetune" / "seed_0" / "checkpoints").exists()  # deleted once finished


def test_config_round_trips_through_a_fresh_process_spec():
    config = experiment.ExperimentConfig(scenario="permuted_mnist", setting="domain", num_tasks=3,
                                         hparams=experiment.methods.HyperParameters(hidden=(16, 8), m=1.35))
    assert experiment.ExperimentConfig.from_dict(json.loads(json.dumps(dataclasses.asdict(config)))) == config


@pytest.mark.parametrize("bad", [0, -1, 2.0, True, "3"])
def test_positive_int_arguments_share_one_message(bad):
    from larq_engrams.arguments import check_positive_int

    with pytest.raises(ValueError, match=r"ContinualTrainer: `epochs` must be a positive int, got"):
        ContinualTrainer(mlp((4,), 2, hidden=(4,)), "adam", epochs=bad)
    with pytest.raises(ValueError, match=r"`batch_size` must be a positive int"):
        B.split_by_classes(np.zeros((4, 2)), np.array([0, 1, 0, 1]), np.zeros((4, 2)), np.array([0, 1, 0, 1]),
                           batch_size=bad)
    with pytest.raises(ValueError, match=r"`hidden` must hold positive ints only"):
        mlp((4,), 2, hidden=(4, bad))
    assert check_positive_int("n", 3) == 3 and isinstance(check_positive_int("n", np.int64(3)), int)


_RETRACING_CHECK = """
import logging
import larq_engrams
import tensorflow as tf
from larq_engrams import benchmarks as B
from larq_engrams.models import engram_bnn
from larq_engrams.training import ContinualTrainer
messages = []
handler = logging.Handler()
handler.emit = lambda record: messages.append(record.getMessage())
tf.get_logger().addHandler(handler)
scenario = B.split_mnist("class", source="bundled", batch_size=500)
model = engram_bnn(scenario.input_shape, 10, hidden=(32, 32), max_tasks=5, lda_features=64)
ContinualTrainer(model, "adam", epochs=2, verbose=0).fit(scenario)  # engrams of 5 sizes, 10 flushes
print("retracing warnings:", len([m for m in messages if "retracing" in m]))
"""


def test_an_engram_run_over_many_tasks_raises_no_retracing_warning():
    # In a process of its own: TensorFlow counts traces per Python function over the
    # whole process, so other tests' evaluators would make the count depend on their order.
    proc = subprocess.run([sys.executable, "-c", _RETRACING_CHECK], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "retracing warnings: 0" in proc.stdout, proc.stdout + proc.stderr[-3000:]


def test_recorded_git_state_lists_the_tracked_files_with_uncommitted_edits(tmp_path):
    """A clean checkout records its commit; edits and a staged rename add "-dirty" and
    their paths, unquoted (the new one for the rename); untracked files are not edits;
    outside a checkout nothing is recorded."""
    from larq_engrams.results import _git_state
    assert _git_state(str(tmp_path)) == (None, None)
    git = lambda *a: subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *a], cwd=tmp_path,  # noqa: E731
                                    check=True, capture_output=True, text=True).stdout.strip()
    git("init", "-q")
    (tmp_path / "pkg").mkdir()
    for name in ("a.py", "b.py", "with space é.py"):
        (tmp_path / "pkg" / name).write_text("x = 0\n")
    git("add", "-A")
    git("commit", "-q", "-m", "start")
    head = git("rev-parse", "HEAD")
    assert _git_state(str(tmp_path / "pkg")) == (head, [])
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    git("mv", "pkg/b.py", "pkg/c.py")
    (tmp_path / "pkg" / "with space é.py").write_text("x = 2\n")
    (tmp_path / "pkg" / "new.py").write_text("y = 0\n")
    assert _git_state(str(tmp_path / "pkg")) == (head + "-dirty", ["pkg/a.py", "pkg/c.py", "pkg/with space é.py"])


def test_long_sequence_plot_skips_rows_not_evaluated_and_is_in_percent():
    figure = plot_long_sequence({"engram_bnn": {"tasks": [1, 2, 3, 4], "acc": [0.99, np.nan, 0.9, 0.85],
                                                "seconds": [10.0, 11.0, 10.5, 12.0]}})
    acc_ax, time_ax = figure.axes
    np.testing.assert_allclose(acc_ax.lines[0].get_xdata(), [1, 3, 4])  # the sampled-out row is not drawn
    np.testing.assert_allclose(acc_ax.lines[0].get_ydata(), [99.0, 90.0, 85.0])
    np.testing.assert_allclose(time_ax.lines[0].get_ydata(), [10.0, 11.0, 10.5, 12.0])
    assert time_ax.get_yscale() == "log"  # a stalled task does not flatten the rest


def test_a_long_sequences_heat_maps_stay_plain_and_bounded():
    """Beyond ANNOTATE_UP_TO tasks: no per-cell text or hatching, a figure no larger
    than at ANNOTATE_UP_TO, at most that many tick labels; below, every cell labelled."""
    from larq_engrams.plots import ANNOTATE_UP_TO, plot_engram_overlap
    big = ANNOTATE_UP_TO * 3
    matrix = np.tril(np.full((big, big), 0.9))
    matrix[big - 1, ::2] = np.nan  # sampled evaluation: unmeasured cells
    for figure, small in ((plot_accuracy_matrix(matrix), plot_accuracy_matrix(matrix[:ANNOTATE_UP_TO, :ANNOTATE_UP_TO])),
                          (plot_engram_overlap(np.eye(big) * 0.2),
                           plot_engram_overlap(np.eye(ANNOTATE_UP_TO) * 0.2))):
        ax = figure.axes[0]
        assert not ax.texts and not [p for p in ax.patches if p.get_hatch()]
        assert len(ax.get_xticks()) <= ANNOTATE_UP_TO and len(ax.get_yticks()) <= ANNOTATE_UP_TO
        assert tuple(figure.get_size_inches()) == tuple(small.get_size_inches())
        assert len(small.axes[0].texts) >= ANNOTATE_UP_TO  # small ones keep their labels
