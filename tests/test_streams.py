"""Task-free streams: the stream, the novelty test, the engram model's own boundaries,
and `StreamTrainer` against baselines in the same stream."""
import numpy as np
import pytest
import tensorflow as tf

from larq_engrams import benchmarks as B, experiment, methods
from larq_engrams.benchmarks.stream import Stream, boundary_scores
from larq_engrams.callbacks.base import ContinualCallback
from larq_engrams.models import engram_bnn
from larq_engrams.novelty import PrequentialNovelty, binomial_tail
from larq_engrams.task_free import change_point
from larq_engrams.optimizers import Adam
from larq_engrams.replay import ReplayModel
from larq_engrams.training import StreamTrainer


def _arrays_scenario(sizes=(300, 300), setting="class"):
    """Two tasks of distinct, easily told classes: class c is a bright block at row 4 c."""
    rng = np.random.default_rng(0)
    images, labels = [], []
    for c in range(4):
        x = rng.integers(0, 40, (sizes[c // 2] // 2 + 10, 28, 28)).astype(np.uint8)
        x[:, 4 * c: 4 * c + 4, :] = 255
        images.append(x)
        labels.append(np.full(len(x), c))
    return B.split_by_classes(np.concatenate(images), np.concatenate(labels), np.concatenate(images),
                              np.concatenate(labels), setting=setting, batch_size=10, seed=0)


@pytest.fixture(scope="module")
def toy():
    return _arrays_scenario()


# ------------------------------------------------------------------------ Stream
def test_stream_with_no_boundaries_is_every_example_once_in_task_order(toy):
    stream = Stream(toy, "none", batch_size=7)
    seen = [batch for batch in stream]
    assert all(b.task is None for b in seen)  # the learner is told nothing
    tasks = np.concatenate([b.true_tasks for b in seen])
    assert (np.diff(tasks) >= 0).all() and len(tasks) == toy[0].num_train + toy[1].num_train
    assert stream.true_boundaries.tolist() == [toy[0].num_train]
    assert sorted(stream.order.tolist()) == list(range(len(tasks)))
    # R[0] after the batch holding the last example of task 0
    assert stream.task_ends == [int(np.ceil(toy[0].num_train / 7)) - 1, len(stream) - 1]


def test_fuzzy_stream_mixes_only_the_window_and_more_of_the_new_task_later(toy):
    stream = Stream(toy, "fuzzy", batch_size=10, transition=100, seed=3)
    tasks = stream.true_tasks[stream.order]
    start = toy[0].num_train
    assert (tasks[: start - 50] == 0).all() and (tasks[start + 50:] == 1).all()
    window = tasks[start - 50: start + 50]
    assert 0 < window[:50].sum() < 50 and window[:50].sum() < window[50:].sum()  # rising share of task 1
    assert sorted(stream.order.tolist()) == list(range(len(tasks)))


def test_given_boundaries_tell_the_task_and_task_il_is_refused(toy):
    assert {b.task for b in Stream(toy, "given", batch_size=50)} == {0, 1}
    with pytest.raises(ValueError, match="task-incremental"):
        Stream(_arrays_scenario(setting="task"), "none")


def test_boundary_scores_by_hand():
    scores = boundary_scores([100, 500, 1000], [110, 1020], tolerance=50)
    assert scores["matched"] == 2
    assert scores["precision"] == pytest.approx(2 / 3) and scores["recall"] == 1.0
    assert scores["f1"] == pytest.approx(0.8)
    assert boundary_scores([], [10], 5)["recall"] == 0.0
    assert boundary_scores([], [], 5)["f1"] == 1.0
    # one detection cannot match two true boundaries
    assert boundary_scores([100], [90, 110], 20)["matched"] == 1


# ------------------------------------------------------------------- novelty test
def test_binomial_tail_by_hand():
    assert binomial_tail(2, 3, 0.5) == pytest.approx(0.5)  # (3 + 1) / 8
    assert binomial_tail(3, 3, 0.1) == pytest.approx(0.001)
    assert binomial_tail(0, 5, 0.3) == 1.0 and binomial_tail(6, 5, 0.3) == 0.0
    assert binomial_tail(1, 2, 0.2) == pytest.approx(1 - 0.8 ** 2)


def test_novelty_test_warms_up_then_tracks_the_error_rate():
    test = PrequentialNovelty(alpha=1e-3, horizon=10, warmup=30, floor=0.02)
    test.update(10, 10)  # 10 examples: below warmup / 2, no rate yet
    assert test.rate is None and not test.is_novel(10, 10)
    test.update(1, 10)  # 20 seen: the rate starts at this batch's 0.1; still warming up
    assert test.rate == pytest.approx(0.1) and not test.testing and test.p_value(10, 10) == 1.0
    test.update(0, 10)  # 30 seen: moves by 1 - 0.9 ** 10 towards 0, and testing starts
    assert test.rate == pytest.approx(0.1 * 0.9 ** 10) and test.testing
    # p~ = max(rate, floor) = 0.0349: 8 errors of 10 is novel, 1 is not
    p = 0.1 * 0.9 ** 10
    assert test.p_value(8, 10) == pytest.approx(binomial_tail(8, 10, p))
    assert test.is_novel(8, 10) and not test.is_novel(1, 10)


# ------------------------------------------------- the engram model's own boundaries
def _engram_model(scenario, **kwargs):
    return engram_bnn(scenario.input_shape, scenario.num_classes, hidden=(64, 64), max_tasks=4, seed=0, **kwargs)


def test_engram_model_finds_the_one_boundary_and_beats_finetuning_in_the_same_stream(toy):
    tf.keras.utils.set_random_seed(0)
    stream = Stream(toy, "none", batch_size=10)
    result = StreamTrainer(_engram_model(toy), lambda: Adam(0.005), seed=0, verbose=0).fit(stream)
    learner = result.config["stream"]["learner"]
    assert [b["engram"] for b in learner["boundaries"]] == [1]
    assert abs(learner["boundaries"][0]["at"] - toy[0].num_train) <= 10
    assert result.metrics["boundary_f1"] == 1.0
    setup = methods.build("finetune", toy, methods.HyperParameters(hidden=(64, 64)))
    plain = StreamTrainer(setup.model, setup.optimizer, seed=0, verbose=0).fit(Stream(toy, "none", batch_size=10))
    assert plain.metrics["acc"] < 0.6 < 0.9 < result.metrics["acc"]  # finetuning forgets task 0


def test_a_short_novelty_is_held_then_released_without_a_boundary(toy):
    tf.keras.utils.set_random_seed(0)
    model = _engram_model(toy, task_free={"confirm": 30, "warmup": 40, "window": 50})
    model.begin_task(0)
    model.compile(optimizer=Adam(0.005), loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.begin_stream()
    policy = model._stream
    batches = [b for b in Stream(toy, "none", batch_size=10)]
    for b in batches[:20]:  # task 0: learned
        out, switched = model.route_stream_batch(b.x, b.y)
        for x, y in out:
            model.train_on_batch(x, y)
        assert not switched
    assert policy.tests[0].testing
    wrong = batches[20]
    out, _ = model.route_stream_batch(wrong.x, wrong.y + 2)  # labels engram 0 never saw: all held
    held = sum(int(c.held.sum()) for c in policy.held)
    assert held == 10 and out == []
    returned = []
    for b in batches[21:27]:  # 60 more examples: the held ones leave the 50-example window
        out, switched = model.route_stream_batch(b.x, b.y)
        returned += [x for x, _ in out]
        assert not switched and len(out) <= 1  # released examples join the batch's own step
    returned = np.concatenate(returned)
    released = sum(bool((returned == row).all(axis=1).any()) for row in wrong.x.reshape(10, -1))
    assert released >= held and policy.boundaries == [] and not policy.held


def test_change_point_by_hand():
    # a run of novel examples from index 6 on, one stray before it
    assert change_point([0, 1, 0, 0, 0, 0, 1, 1, 1, 1], 0.05) == 6
    assert change_point([0, 0, 0], 0.05) == 0


def test_task_free_settings_are_checked_and_saved(toy):
    with pytest.raises(ValueError, match="task_free takes"):
        _engram_model(toy, task_free={"alpha": 0.01, "patience": 3})
    model = _engram_model(toy, task_free={"alpha": 0.01})
    assert model.get_config()["task_free"] == {"alpha": 0.01}
    assert type(model).from_config(model.get_config()).task_free == {"alpha": 0.01}


def test_online_replay_fills_its_buffer_from_the_stream(toy):
    setup = methods.build("er", toy, methods.HyperParameters(hidden=(32,), buffer_size=50))
    result = StreamTrainer(setup.model, setup.optimizer, seed=0, verbose=0).fit(Stream(toy, "none", batch_size=10))
    buffer = setup.model.buffer
    assert isinstance(setup.model, ReplayModel) and int(buffer.size) == 50
    assert set(np.unique(buffer.labels.numpy()).tolist()) == {0, 1, 2, 3}  # both tasks kept
    assert "boundary_f1" not in result.metrics  # a model without boundaries of its own


def test_a_stream_is_one_pass_of_a_class_or_domain_scenario():
    with pytest.raises(ValueError, match="one pass"):
        experiment.ExperimentConfig(boundaries="none", epochs=2)
    with pytest.raises(ValueError, match="boundaries"):
        experiment.ExperimentConfig(boundaries="sometimes")
    with pytest.raises(ValueError, match="transition"):
        experiment.ExperimentConfig(boundaries="none", transition=100)
    assert experiment.ExperimentConfig(boundaries="fuzzy").name == "split_mnist-class-stream-fuzzy"


def test_callbacks_that_learn_at_task_ends_are_refused_and_observers_hear_true_task_ends(toy):
    setup = methods.build("ewc", toy, methods.HyperParameters(hidden=(16,)))
    with pytest.raises(ValueError, match="learns at the end of each task"):
        StreamTrainer(setup.model, setup.optimizer, callbacks=setup.callbacks, verbose=0)
    class Rows(ContinualCallback):  # an observer
        def __init__(self):
            super().__init__()
            self.rows = []

        def on_task_end(self, task, logs=None):
            self.rows.append((task, len(logs["accuracy_matrix"])))

    rows = Rows()
    setup = methods.build("er", toy, methods.HyperParameters(hidden=(16,), buffer_size=20))
    StreamTrainer(setup.model, setup.optimizer, callbacks=[*setup.callbacks, rows], verbose=0).fit(
        Stream(toy, "none", batch_size=25))
    assert rows.rows == [(0, 1), (1, 2)]  # the observer, not the replay update, heard the task ends


def test_a_task_that_comes_back_returns_to_its_engram(toy):
    tf.keras.utils.set_random_seed(0)
    model = _engram_model(toy, task_free={"warmup": 40})
    model.begin_task(0)
    model.compile(optimizer=Adam(0.005), loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.begin_stream()
    batches = [(b.x, b.y) for b in Stream(toy, "none", batch_size=10)]
    first = int(np.ceil(toy[0].num_train / 10))
    for x, y in batches + batches[:first]:  # task 0, task 1, then task 0 again
        out, _ = model.route_stream_batch(x, y)
        for bx, by in out:
            model.train_on_batch(bx, by)
    found = model.stream_report()["boundaries"]
    assert [(b["engram"], b["new"]) for b in found] == [(1, True), (0, False)]
    assert model.allocated_tasks == [0, 1]


def test_fuzzy_boundaries_keep_each_engram_to_its_own_classes(toy):
    # Over a 160-example transition the new task's examples come in a few at a time:
    # held, not trained, until their run is confirmed; the old task's tail then goes
    # to the previous engram. So neither engram learns the other's classes.
    tf.keras.utils.set_random_seed(0)
    stream = Stream(toy, "fuzzy", batch_size=10, transition=160, seed=0)
    model = _engram_model(toy, task_free={"warmup": 40, "window": 100})
    result = StreamTrainer(model, lambda: Adam(0.005), seed=0, verbose=0).fit(stream)
    learner = result.config["stream"]["learner"]
    assert [b["engram"] for b in learner["boundaries"]] == [1] and result.metrics["boundary_f1"] == 1.0
    classes = model.engram_classes.numpy()[:2] > 0.5
    assert classes.tolist() == [[True, True, False, False], [False, False, True, True]]
    assert learner["to_previous"] > 0 and result.metrics["acc"] > 0.9
