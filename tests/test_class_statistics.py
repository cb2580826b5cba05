"""NCM and streaming LDA: closed-form logits, streaming, and the registry's ncm / slda."""
import numpy as np
import pytest
import tensorflow as tf

from larq_engrams import benchmarks as B
from larq_engrams import methods
from larq_engrams.class_statistics import ClassStatisticsClassifier
from larq_engrams.training import ContinualTrainer


def toy(seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1, 3], [20, 30, 25])  # class 2 never seen
    x = rng.normal(size=(len(y), 2, 3)) + y[:, None, None] * np.array([1.0, -0.5, 0.2, 0.0, 2.0, -1.0]).reshape(2, 3)
    return x.astype(np.float32), y


def test_ncm_logits_are_the_closed_form():
    x, y = toy()
    model = ClassStatisticsClassifier((2, 3), 4, rule="ncm")
    model.observe(x, y)
    flat = x.reshape(len(x), -1).astype(np.float64)
    query = np.random.default_rng(1).normal(size=(5, 2, 3)).astype(np.float32)
    logits = model(query).numpy()
    for c in (0, 1, 3):
        mu = flat[y == c].mean(0)
        expected = query.reshape(5, -1) @ mu - 0.5 * mu @ mu
        np.testing.assert_allclose(logits[:, c], expected, rtol=1e-5, atol=1e-5)
    assert np.all(logits[:, 2] == -1e9)  # never seen: never predicted


def test_slda_logits_are_the_closed_form_and_streaming_changes_nothing():
    x, y = toy()
    lam = 0.3
    flat = x.reshape(len(x), -1).astype(np.float64)
    means = {c: flat[y == c].mean(0) for c in (0, 1, 3)}
    within = sum((flat[y == c] - means[c]).T @ (flat[y == c] - means[c]) for c in means) / len(y)
    shrunk = (1 - lam) * within + lam * np.trace(within) / 6 * np.eye(6)
    P = np.linalg.inv(shrunk)
    query = np.random.default_rng(2).normal(size=(4, 2, 3)).astype(np.float32)
    at_once = ClassStatisticsClassifier((2, 3), 4, rule="slda", shrinkage=lam)
    at_once.observe(x, y)
    streamed = ClassStatisticsClassifier((2, 3), 4, rule="slda", shrinkage=lam)
    order = np.random.default_rng(3).permutation(len(y))
    for part in np.array_split(order, 4):
        streamed.observe(x[part], y[part])
    for model in (at_once, streamed):
        logits = model(query).numpy()
        for c, mu in means.items():
            expected = query.reshape(4, -1) @ P @ mu - 0.5 * mu @ P @ mu
            np.testing.assert_allclose(logits[:, c], expected, rtol=1e-4, atol=1e-4)


def test_a_call_refreshes_only_after_new_data():
    x, y = toy()
    model = ClassStatisticsClassifier((2, 3), 4, rule="slda")
    assert np.all(model(x[:2]).numpy() == -1e9)  # nothing seen yet
    model.observe(x[y == 0], y[y == 0])
    assert bool(model.stale)
    first = model(x[:2]).numpy()
    assert not bool(model.stale)
    np.testing.assert_array_equal(model.stale_logits(x[:2]).numpy(), first)
    model.observe(x[y == 1], y[y == 1])
    assert not np.array_equal(model(x[:2]).numpy(), first)


def test_config_round_trip_and_model_fit():
    model = ClassStatisticsClassifier((2, 3), 4, rule="ncm", features=16, seed=5, name="ncm")
    clone = ClassStatisticsClassifier.from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    x, y = toy()
    clone.compile(metrics=["accuracy"])
    history = clone.fit(x, y, batch_size=25, epochs=1, verbose=0)
    assert history.history["accuracy"][0] >= 0.0 and int(tf.reduce_sum(clone.discriminant.counts)) == len(y)


def test_fit_reports_the_accuracy_of_a_discriminant_refreshed_as_its_data_doubles():
    x, y = toy()
    order = np.random.default_rng(1).permutation(len(y))
    x, y = x[order], y[order]
    model = ClassStatisticsClassifier((2, 3), 4, rule="ncm")
    model.compile(metrics=["accuracy"])
    history = model.fit(x, y, batch_size=5, epochs=1, shuffle=False, verbose=0)
    # refreshed after 5, 10, 20, 40 examples (its data doubled), not after every batch
    assert float(model.refreshed_count) == 40.0
    # each batch is scored before it is observed, by a discriminant that has seen at least half
    # the data before it; an empty one predicts class 0 for every input (27 % here)
    assert history.history["accuracy"][0] > 0.6
    model.fit(x, y, batch_size=5, epochs=1, verbose=0)  # the next pass starts from the refreshed one
    assert float(model.refreshed_count) >= len(y)


@pytest.mark.parametrize("name, floor", [("ncm", 0.8), ("slda", 0.85)])
def test_registry_methods_learn_class_incremental_split_mnist(name, floor):
    scenario = B.split_mnist("class", source="bundled", batch_size=500).take(3)
    setup = methods.build(name, scenario, methods.HyperParameters())
    result = ContinualTrainer(setup.model, setup.optimizer, epochs=1, verbose=0, jit_compile=False).fit(setup.scenario)
    R = result.R
    assert result.metrics["acc"] > floor  # regularization methods sit near 1/T here
    assert R[2, 0] > 0.7 and R[2, 1] > 0.7  # old classes keep being recognised


@pytest.mark.parametrize("setting, task_groups", [("class", 1), ("domain", 3)])
def test_slda_rf_is_the_engram_models_router_alone(setting, task_groups):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 12)).astype(np.float32)
    y = rng.integers(0, 6, 600)
    x += y[:, None] * rng.normal(size=12).astype(np.float32) * 0.5
    scenario = B.split_by_classes(x[:400], y[:400], x[400:], y[400:], setting=setting, classes_per_task=2)
    hp = methods.HyperParameters(hidden=(16,), lda_features=32, seed=3)
    router = methods.build("slda_rf", scenario, hp).model
    engram = methods.build("engram", scenario, hp).model
    assert router.task_groups == task_groups  # domain-IL: one group per (task, class), as the router keeps
    for task in scenario:
        engram.begin_task(task.task_id)
        engram.observe_task_data(task.train)
        router.begin_task(task.task_id)
        for xb, yb in task.train:
            router.observe(xb, yb)
    # The same features (count and seed), shrinkage, groups and class evidence: slda_rf's
    # logits are the router's alone (class-IL: each class's best (engram, class) group;
    # domain-IL: the best engram's own class evidence), on every test input.
    expected = engram.task_discriminant.predict_classes(tf.constant(x[400:])).numpy()
    np.testing.assert_allclose(router(x[400:]).numpy(), expected, rtol=1e-4, atol=1e-3)
    if setting == "class":
        groups = engram.task_discriminant.group_scores(tf.constant(x[400:])).numpy().max(axis=1)
        np.testing.assert_allclose(expected, groups, rtol=1e-6)
    assert router.discriminant.class_covariance == engram.task_discriminant.class_covariance
    assert router.discriminant.class_covariance == ("task" if setting == "domain" else "shared")
    assert router.discriminant.features == engram.lda_features == 32
    assert router.shrinkage == engram.lda_shrinkage


def test_task_groups_keep_each_tasks_class_apart():
    """Two tasks give label 0 to inputs far apart, (6, 0) and (-6, 0), label 1 to inputs
    at (3, 0): with a group per (task, class) each class-0 cloud keeps its own mean;
    pooled into one class they average to the origin, and (6, 0) falls to class 1."""
    rng = np.random.default_rng(1)
    grouped = ClassStatisticsClassifier((2,), 2, rule="ncm", task_groups=2)
    pooled = ClassStatisticsClassifier((2,), 2, rule="ncm")
    for task, centre in enumerate(([6.0, 0.0], [-6.0, 0.0])):
        x = np.concatenate([rng.normal(size=(40, 2)) * 0.3 + centre, rng.normal(size=(40, 2)) * 0.3 + [3.0, 0.0]])
        for model in (grouped, pooled):
            model.begin_task(task)
            model.observe(x.astype(np.float32), np.repeat([0, 1], 40))
    query = np.array([[6.0, 0.0], [-6.0, 0.0]], np.float32)
    np.testing.assert_array_equal(grouped(query).numpy().argmax(-1), [0, 0])
    np.testing.assert_array_equal(pooled(query).numpy().argmax(-1), [1, 0])
    with pytest.raises(ValueError, match="outside its 2 task_groups"):
        grouped.begin_task(2)
    clone = ClassStatisticsClassifier.from_config(grouped.get_config())
    assert clone.task_groups == 2
