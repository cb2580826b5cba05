"""Task inference from input statistics: `InputDiscriminant` against closed-form LDA, and
`EngramModel`'s "infer" mode with `confidence="input_lda"`."""
import os

import numpy as np
import pytest
import tensorflow as tf

import larq_engrams as le
from larq_engrams import benchmarks, methods
from larq_engrams import runtime, task_inference
from larq_engrams.class_statistics import ClassStatisticsClassifier
from larq_engrams.task_inference import InputDiscriminant
from larq_engrams.training import ContinualTrainer

LOSS = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def closed_form_scores(groups, x, shrinkage, projection=None):
    """Numpy LDA: groups = {(task, class): inputs}; returns {task: max_c g_{task,c}(x)},
    on relu(x R) with a projection R."""
    if projection is not None:
        features = lambda v: np.maximum(v.astype(np.float64) @ projection.astype(np.float64), 0)  # noqa: E731
        groups = {g: features(v) for g, v in groups.items()}
        x = features(x)
    means = {g: v.mean(0) for g, v in groups.items()}
    resid = np.concatenate([v - means[g] for g, v in groups.items()])
    cov = resid.T @ resid / len(resid)
    d = cov.shape[0]
    cov = (1 - shrinkage) * cov + shrinkage * np.trace(cov) / d * np.eye(d)
    prec = np.linalg.inv(cov)
    scores = {}
    for (t, c), mu in means.items():
        g = x @ prec @ mu - 0.5 * mu @ prec @ mu
        scores[t] = np.maximum(scores.get(t, -np.inf), g)
    return scores


@pytest.mark.parametrize("features", [None, 9], ids=["raw_inputs", "random_features"])
def test_discriminant_matches_closed_form_lda(features):
    rng = np.random.default_rng(0)
    d, tasks, classes = 6, 3, 5
    layer = InputDiscriminant(tasks, classes, features=features, shrinkage=0.2)
    layer.build((None, d))
    projection = None if features is None else layer.projection().numpy()
    if features is not None:  # R: seeded signs / sqrt(D)
        np.testing.assert_allclose(np.abs(projection), 1 / np.sqrt(d), rtol=1e-6)
        again = InputDiscriminant(tasks, classes, features=features)
        again.build((None, d))
        np.testing.assert_array_equal(again.projection().numpy(), projection)
    groups = {}
    # engram 0: classes 0, 1; engram 2: classes 1, 3 (engram 1 has no data)
    for task, pair in ((0, (0, 1)), (2, (1, 3))):
        y = rng.choice(pair, 60).astype(np.int32)
        x = (rng.normal(size=(60, d)) + 2 * y[:, None] * (np.arange(d) == task)).astype(np.float32)
        for start in range(0, 60, 25):  # streaming: uneven batches
            layer.observe(x[start:start + 25], y[start:start + 25], task)
        for c in pair:
            groups[(task, c)] = x[y == c].astype(np.float64)
    layer.refresh()
    probe = rng.normal(size=(7, d)).astype(np.float32)
    scores = layer(probe).numpy()
    expected = closed_form_scores(groups, probe.astype(np.float64), 0.2, projection)
    np.testing.assert_allclose(scores[:, 0], expected[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(scores[:, 2], expected[2], rtol=1e-4, atol=1e-4)
    assert np.all(scores[:, 1] < -1e8)  # no data: never chosen
    np.testing.assert_array_equal(layer.observed_tasks().numpy(), [True, False, True])


def test_memory_bits_separate_what_inference_needs_from_the_learning_statistics():
    # 2 engrams x 3 classes, 4 inputs, 5 random features; counted by hand:
    layer = InputDiscriminant(2, 3, features=5)
    layer.build((None, 4))
    inference = (2 * 3 * 5 + 2 * 3) * 32 + 4 * 32  # float32 kernel, bias; R's 5 signs per row in one int32 word
    statistics = (2 * 3 + 2 * 3 * 5 + 6 * 7 // 2) * 32  # float32 counts, sums; scatter of 5 (padded to 6) once
    assert layer.memory_bits() == (inference, statistics)
    raw = InputDiscriminant(2, 3, features=None, covariance="identity")
    raw.build((None, 4))  # no projection, no scatter
    assert raw.memory_bits() == ((2 * 3 * 4 + 2 * 3) * 32, (2 * 3 + 2 * 3 * 4) * 32)


def test_the_default_router_holds_at_most_10_mib():
    layer = InputDiscriminant(5, 10)  # 784-2048 at the defaults, 5 engrams
    layer.build((None, 784))
    inference, statistics = layer.memory_bits()
    held = sum(int(tf.size(v)) * v.dtype.size for v in layer.weights)
    assert held * 8 == inference + statistics
    assert held == 784 * 64 * 4 + 4 * (2 * 50 * 2048 + 50 + 50 + 2049 * 1024)
    assert held <= 10 * 2 ** 20


@pytest.mark.parametrize("size", [1, 4, 5])
def test_a_symmetric_matrix_is_stored_once(size):
    a = np.arange(size * size, dtype=np.float32).reshape(size, size)
    a = a + a.T
    packed = task_inference.pack_symmetric(tf.constant(a))
    half = -(-size // 2)
    assert packed.shape == task_inference.packed_symmetric_shape(size) == (2 * half + 1, half)
    np.testing.assert_array_equal(task_inference.unpack_symmetric(packed, size).numpy(), a)
    if size == 4:  # by hand: tril(A11) one row down, triu(A22), then A21
        np.testing.assert_array_equal(packed.numpy(), [[a[2, 2], a[2, 3]], [a[0, 0], a[3, 3]],
                                                       [a[1, 0], a[1, 1]], a[2, :2], a[3, :2]])


def test_the_projection_is_the_seeded_signs_over_sqrt_d():
    layer = InputDiscriminant(1, 2, features=45, seed=4)
    layer.build((None, 6))
    draws = tf.random.stateless_normal((6, 45), seed=[4, 7919]).numpy()
    projection = layer.projection().numpy()
    np.testing.assert_array_equal(np.sign(projection), np.where(draws < 0, -1, 1))
    np.testing.assert_allclose(np.abs(projection), 1 / np.sqrt(6), rtol=1e-6)
    assert layer.projection_bits.dtype == tf.int32 and layer.projection_bits.shape == (6, 2)
    # As bytes: the packed runtime's sign bits.
    np.testing.assert_array_equal(task_inference.sign_bytes(layer.projection_bits.numpy(), 45),
                                  runtime.pack_signs(draws))


def test_float32_statistics_stay_exact_where_raw_second_moments_cancel():
    # Inputs far from 0 against their spread: sum x x^T - n mu mu^T in float32 would
    # lose every digit of the covariance; the batch-merged scatter keeps it.
    rng = np.random.default_rng(1)
    x = (1000.0 + rng.normal(size=(3000, 3)) * [1.0, 0.5, 2.0]).astype(np.float32)
    y = rng.integers(0, 2, 3000).astype(np.int32)
    layer = InputDiscriminant(1, 2, features=None)
    layer.build((None, 3))
    for start in range(0, 3000, 128):
        layer.observe(x[start:start + 128], y[start:start + 128], 0)
    x64 = x.astype(np.float64)
    resid = np.concatenate([x64[y == c] - x64[y == c].mean(0) for c in (0, 1)])
    expected = resid.T @ resid
    scatter = task_inference.unpack_symmetric(layer.scatter, 3).numpy()
    np.testing.assert_allclose(scatter, expected, rtol=2e-3, atol=1e-2 * np.abs(expected).max())


def test_discriminant_rejects_bad_settings():
    with pytest.raises(ValueError, match="shrinkage"):
        InputDiscriminant(2, 2, shrinkage=1.5)
    with pytest.raises(ValueError, match="at most"):
        InputDiscriminant(2, 2, features=None).build((None, 5000))
    with pytest.raises(ValueError, match="at most"):
        InputDiscriminant(2, 2, features=5000).build((None, 10))
    with pytest.raises(ValueError, match="features"):
        InputDiscriminant(2, 2, features=0)
    with pytest.raises(ValueError, match="class_covariance"):
        InputDiscriminant(2, 2, class_covariance="own")
    with pytest.raises(ValueError, match="needs covariance='shared'"):
        InputDiscriminant(2, 2, covariance="identity", class_covariance="task")
    with pytest.raises(ValueError, match="lda_class_covariance"):
        le.engram_bnn((8,), 2, hidden=(8,), max_tasks=2, lda_class_covariance="own")
    with pytest.raises(ValueError, match="input_lda"):
        le.engram_bnn((5000,), 2, hidden=(8,), max_tasks=2, confidence="excitation",
                      lda_features=None).set_inference(
            "infer", confidence="input_lda")


def _two_domain_tasks(seed=0, n=400, d=16):
    """Task 0: classes 0/1 around +3 on feature 0; task 1: classes 2/3 around -3."""
    rng = np.random.default_rng(seed)
    out = []
    for t, pair in enumerate(((0, 1), (2, 3))):
        y = rng.choice(pair, n).astype(np.int32)
        x = rng.normal(size=(n, d)).astype(np.float32)
        x[:, 0] += 3.0 if t == 0 else -3.0
        x[:, 1] += np.where(y == pair[0], 2.0, -2.0)
        out.append((x, y))
    return out


def test_fit_records_inputs_and_infer_picks_the_discriminants_engram():
    tasks = _two_domain_tasks()
    model = le.engram_bnn((16,), 4, hidden=(32,), max_tasks=2, engram_fraction=0.5)
    for t, (x, y) in enumerate(tasks):
        model.begin_task(t)
        model.compile(optimizer="adam", loss=LOSS)
        model.fit(x, y, batch_size=50, epochs=1, verbose=0, validation_split=0.25)
    # fit observed the training rows only (Keras validates on the last 25 %).
    np.testing.assert_allclose(model.task_discriminant.counts.numpy().sum(axis=1), [300, 300])
    groups = {(t, c): x[:300][y[:300] == c] for t, (x, y) in enumerate(tasks) for c in np.unique(y)}
    x = np.concatenate([tasks[0][0], tasks[1][0]])
    expected = closed_form_scores({g: v.astype(np.float64) for g, v in groups.items()}, x, 0.01,
                                  model.task_discriminant.projection().numpy())
    best = np.stack([expected[0], expected[1]]).argmax(axis=0)
    model.set_inference("infer")
    np.testing.assert_array_equal(model.infer_tasks(x).numpy(), best)
    truth = np.repeat([0, 1], 400)
    assert (best == truth).mean() > 0.95  # the tasks differ in their inputs: inferred


def test_infer_without_statistics_is_a_clear_error():
    model = le.engram_bnn((16,), 4, hidden=(32,), max_tasks=2)
    model.begin_task(0)
    model.set_inference("infer")
    with pytest.raises(tf.errors.InvalidArgumentError, match="observe_task_data"):
        model.predict(np.zeros((4, 16), np.float32), verbose=0)
    with pytest.raises(ValueError, match="`y`"):
        model.observe_task_data(np.zeros((4, 16), np.float32))
    endless = tf.data.Dataset.from_tensor_slices((np.zeros((4, 16), np.float32), np.zeros(4, np.int32))).batch(2).repeat()
    with pytest.raises(ValueError, match="repeats"):
        model.observe_task_data(endless)
    single = tf.data.Dataset.from_tensor_slices((np.zeros((4, 16), np.float32), np.zeros(4, np.int32)))
    with pytest.raises(ValueError, match="single examples"):
        model.observe_task_data(single)


def test_a_dataset_is_observed_in_the_batches_arrays_are():
    """The router observes in batches of `batch_size` whatever the dataset's batching
    (its M x M update per batch makes small batches slow): a dataset of batches of 7
    with sample weights gives exactly the statistics of the same arrays."""
    (x, y), _ = _two_domain_tasks()
    statistics = []
    for data in ((x, y), (tf.data.Dataset.from_tensor_slices((x, y, np.ones(len(y), np.float32))).batch(7),)):
        model = le.engram_bnn((16,), 4, hidden=(32,), max_tasks=2)
        model.begin_task(0)
        model.observe_task_data(*data, batch_size=250)
        router = model.task_discriminant
        statistics.append([v.numpy() for v in (router.counts, router.sums, router.scatter, router.kernel)])
    for arrays, dataset in zip(*statistics):
        np.testing.assert_array_equal(dataset, arrays)


def test_statistics_are_saved_with_the_model(tmp_path):
    (x, y), _ = _two_domain_tasks()
    model = le.engram_bnn((16,), 4, hidden=(32,), max_tasks=2)
    model.begin_task(0)
    model.observe_task_data(x, y)
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    restored = tf.keras.models.load_model(path)
    np.testing.assert_array_equal(restored.task_discriminant.kernel.numpy(), model.task_discriminant.kernel.numpy())
    np.testing.assert_array_equal(restored.task_discriminant.projection().numpy(),
                                  model.task_discriminant.projection().numpy())
    assert restored.confidence == "input_lda" and restored.lda_shrinkage == pytest.approx(0.01)


def test_input_lda_infers_tasks_on_real_split_mnist_far_better_than_excitation():
    """Bundled MNIST, class-IL, validation split of 3 tasks: the discriminant picks the
    right engram far above chance (1/3) and above the excitation score."""
    scenario = benchmarks.split_mnist("class", source="bundled", evaluate_on="validation").take(3)
    inference = {}
    for confidence in ("input_lda", "excitation"):
        setup = methods.build("engram", scenario, methods.HyperParameters(hidden=(64, 64)))
        setup.model.confidence = confidence
        result = ContinualTrainer(setup.model, setup.optimizer, epochs=1, verbose=0, seed=0).fit(setup.scenario)
        inference[confidence] = result.metrics["task_inference"]
    print("task inference", inference)
    assert inference["input_lda"] > 0.85
    assert inference["input_lda"] > inference["excitation"] + 0.05


@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"),
                    reason="Fashion-MNIST files absent (apt-get install dataset-fashion-mnist)")
def test_input_lda_infers_tasks_on_real_split_fashion_mnist():
    scenario = benchmarks.split_fashion_mnist("class", evaluate_on="validation").take(2)
    setup = methods.build("engram", scenario, methods.HyperParameters(hidden=(64, 64)))
    result = ContinualTrainer(setup.model, setup.optimizer, epochs=1, verbose=0, seed=0).fit(setup.scenario)
    print("task inference", result.task_inference)
    assert result.metrics["task_inference"] > 0.8  # chance: 0.5


def test_infer_output_is_the_product_of_the_engram_and_the_discriminant():
    """log_softmax(engram logits over its classes) + w * log_softmax(g_{s,c}) per sample."""
    tasks = _two_domain_tasks()
    model = le.engram_bnn((16,), 4, hidden=(32,), max_tasks=2, engram_fraction=0.5, lda_features=None,
                          lda_weight=0.5)
    for t, (x, y) in enumerate(tasks):
        model.begin_task(t)
        model.compile(optimizer="adam", loss=LOSS)
        model.fit(x, y, batch_size=50, epochs=1, verbose=0)
    x = np.concatenate([tasks[0][0][:20], tasks[1][0][:20]])
    model.set_inference("infer")
    chosen = model.infer_tasks(x).numpy()
    got = model.predict(x, verbose=0)
    groups = model.task_discriminant.group_scores(model.flatten(x)).numpy().astype(np.float64)
    for i, s in enumerate(chosen):
        classes = np.flatnonzero(model.engram_classes.numpy()[s])
        logits = model((x[i:i + 1], np.array([s], np.int32))).numpy()[0, classes].astype(np.float64)
        log_softmax = lambda a: a - a.max() - np.log(np.exp(a - a.max()).sum())  # noqa: E731
        expected = log_softmax(log_softmax(logits) + 0.5 * log_softmax(groups[i, s, classes]))
        # normalized over the engram's classes, with mass 1e-3 / 4 left to the others
        np.testing.assert_allclose(got[i, classes], np.log(1 - 2.5e-4) + expected, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(got[i, np.setdiff1d(np.arange(4), classes)], np.log(2.5e-4 / 2), rtol=1e-5)


def test_a_model_without_router_keeps_nothing_and_learns_task_il_exactly_as_with_one():
    """Task-IL gives every input its task id, so the router is never asked: the registry
    builds engram models there without it (no bytes kept), and the accuracies are the same."""
    task_il = benchmarks.split_mnist("task", source="bundled", batch_size=256).take(2)
    class_il = benchmarks.split_mnist("class", source="bundled", batch_size=256).take(2)
    hp = methods.HyperParameters(hidden=(16, 16), lda_features=64)
    assert methods.build("engram_bnn", task_il, hp).model.task_discriminant is None
    assert methods.build("engram_bnn", class_il, hp).model.router
    matrices = []
    for router in (True, False):
        tf.keras.utils.set_random_seed(0)
        task_il = benchmarks.split_mnist("task", source="bundled", batch_size=256).take(2)  # the same shuffles
        model = le.engram_bnn(task_il.input_shape, 10, hidden=(32, 32), max_tasks=2, lda_features=64, router=router)
        matrices.append(ContinualTrainer(model, "adam", epochs=1, verbose=0, jit_compile=False).fit(task_il).R)
    np.testing.assert_array_equal(matrices[0], matrices[1])
    assert model.state_bytes() == (0, 0) and model.task_discriminant is None
    restored = le.EngramModel.from_config(model.get_config())
    assert not restored.router and restored.task_discriminant is None
    with pytest.raises(ValueError, match="needs the router"):
        restored.set_inference("infer")
    model.set_inference("infer", confidence="excitation")  # the measures without statistics still work
    with pytest.raises(ValueError, match="needs the router"):
        le.engram_bnn((16,), 4, hidden=(8,), max_tasks=2, router=False, inference_mode="infer")


def _router_bytes(tasks, features, class_covariance="shared"):
    router = InputDiscriminant(tasks, 10, features, class_covariance=class_covariance)
    router.build((None, 784))
    return sum(router.state_bytes())


def test_a_long_sequence_router_takes_the_most_features_its_budget_allows():
    budget = 6 * 2 ** 20
    features = task_inference.features_within_budget(100, 10, 784, budget=budget)
    assert features % 256 == 0 and _router_bytes(100, features) <= budget < _router_bytes(100, features + 256)
    assert task_inference.features_within_budget(5, 10, 784) == task_inference.DEFAULT_FEATURES


def test_the_router_keeps_its_default_features_up_to_a_long_sequence():
    from larq_engrams.experiment import ExperimentConfig, make_scenario

    def count(tasks, **hp):
        scenario = make_scenario(ExperimentConfig(scenario="permuted_mnist", setting="domain", num_tasks=tasks), 0)
        return methods.router_feature_count(scenario, methods.HyperParameters(**hp))

    assert count(methods.LONG_SEQUENCE) == task_inference.DEFAULT_FEATURES
    for covariance in ("shared", "task"):  # domain-IL's default ("auto") is "task": its bytes decide
        long = count(100, router_class_covariance=covariance)
        assert long < task_inference.DEFAULT_FEATURES
        assert _router_bytes(100, long, covariance) <= task_inference.ROUTER_BUDGET
        assert _router_bytes(100, long + 256, covariance) > task_inference.ROUTER_BUDGET
    assert count(100) == count(100, router_class_covariance="task")
    assert count(100, lda_features=512) == 512  # asked for: kept


def test_a_long_sequences_router_scores_a_shortlist_of_engrams():
    from larq_engrams.experiment import ExperimentConfig, make_scenario

    def shortlist(tasks, name="permuted_mnist", setting="domain", **hp):
        scenario = make_scenario(ExperimentConfig(scenario=name, setting=setting, num_tasks=tasks), 0)
        setup = methods.build("engram_bnn", scenario, methods.HyperParameters(hidden=(8,), **hp))
        assert setup.model.task_discriminant.shortlist == setup.model.router_shortlist
        return methods.router_shortlist(scenario, methods.HyperParameters(**hp)), setup.model.router_shortlist

    assert shortlist(methods.LONG_SEQUENCE) == (None, None)  # every group: earlier results unchanged
    assert shortlist(methods.LONG_SEQUENCE + 1) == (task_inference.DEFAULT_SHORTLIST,) * 2
    assert shortlist(3, router_shortlist=2) == (2, 2)  # asked for: kept
    assert shortlist(5, "split_mnist", "class") == (None, None)  # class-IL: every group
    assert shortlist(5, "split_mnist", "class", router_shortlist=3) == (3, 3)


def test_the_router_keeps_each_tasks_class_evidence_where_tasks_share_labels():
    from larq_engrams.experiment import ExperimentConfig, make_scenario

    def router(method, setting, **hp):
        scenario = make_scenario(ExperimentConfig(scenario="split_mnist", setting=setting, source="bundled"), 0)
        model = methods.build(method, scenario, methods.HyperParameters(hidden=(16,), **hp)).model
        return model.task_discriminant if method == "engram_bnn" else model.discriminant

    for method in ("engram_bnn", "slda_rf"):
        assert router(method, "domain").class_covariance == "task"
        assert router(method, "class").class_covariance == "shared"
        assert router(method, "domain", router_class_covariance="shared").class_covariance == "shared"
    with pytest.raises(ValueError, match="router_class_covariance"):
        router("engram_bnn", "domain", router_class_covariance="own")


def _task_lda(x, y, classes, shrinkage):
    """Numpy LDA of one task on its own covariance: (kernel (C, M), bias (C,))."""
    x = x.astype(np.float64)
    means = np.stack([x[y == c].mean(0) for c in classes])
    resid = np.concatenate([x[y == c] - means[i] for i, c in enumerate(classes)])
    cov = resid.T @ resid / len(resid)
    variances = np.diag(cov)
    cov = (1 - shrinkage) * cov
    cov[np.diag_indices(len(cov))] = (1 - shrinkage) * variances + shrinkage * variances.mean()
    kernel = np.linalg.solve(cov, means.T).T
    return kernel, -0.5 * (kernel * means).sum(-1)


def _covariance_tasks(seed=0, n=300, d=8):
    """Domain-IL: two tasks, the same classes 0..2 (means along e_0), each with its own
    noise: strong along e_0 + e_1 in task 0 and e_0 - e_1 in task 1, so that x_1 tells
    the noise on x_0 apart within a task but not across both; e_7 says the task."""
    rng = np.random.default_rng(seed)
    tasks = []
    for t, sign in enumerate((1.0, -1.0)):
        y = rng.integers(0, 3, n).astype(np.int32)
        x = 0.5 * rng.normal(size=(n, d))
        x += 3.0 * rng.normal(size=(n, 1)) * (np.eye(d)[0] + sign * np.eye(d)[1])
        x += (y[:, None] - 1.0) * np.eye(d)[0] + 6.0 * t * np.eye(d)[-1]
        tasks.append((x.astype(np.float32), y))
    return tasks


def test_task_class_evidence_is_each_tasks_own_lda():
    """h_{s,c} = mu^T P_s f - mu^T P_s mu / 2 with task s's covariance, computed by hand;
    the routing scores stay the shared discriminant's."""
    tasks = _covariance_tasks()
    layer = InputDiscriminant(2, 3, features=None, shrinkage=0.1, class_covariance="task")
    shared = InputDiscriminant(2, 3, features=None, shrinkage=0.1)
    for d in (layer, shared):
        d.build((None, 8))
    for t, (x, y) in enumerate(tasks):
        for start in range(0, len(x), 70):  # uneven batches
            for d in (layer, shared):
                d.observe(x[start:start + 70], y[start:start + 70], t)
        for d in (layer, shared):
            d.refresh()
    for t, (x, y) in enumerate(tasks):
        kernel, bias = _task_lda(x, y, range(3), 0.1)
        np.testing.assert_allclose(layer.class_kernel.numpy()[t], kernel, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(layer.class_bias.numpy()[t], bias, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(layer.kernel.numpy(), shared.kernel.numpy())  # routing unchanged
    x = tasks[1][0][:5]
    evidence = layer.class_evidence(layer.transform(x), tf.constant([1, 1, 0, 0, 1])).numpy()
    np.testing.assert_allclose(evidence[0], x[0] @ layer.class_kernel.numpy()[1].T + layer.class_bias.numpy()[1],
                               rtol=1e-5)
    np.testing.assert_allclose(evidence[2], x[2] @ layer.class_kernel.numpy()[0].T + layer.class_bias.numpy()[0],
                               rtol=1e-5)
    # "shared": the class evidence is the groups' own scores
    groups = shared.group_scores(x).numpy()
    np.testing.assert_allclose(shared.class_evidence(shared.transform(x), tf.constant([1, 1, 0, 0, 1])).numpy(),
                               groups[np.arange(5), [1, 1, 0, 0, 1]])


def test_a_task_observed_after_another_without_refresh_keeps_its_own_evidence():
    tasks = _covariance_tasks()
    once, each = (InputDiscriminant(2, 3, features=None, shrinkage=0.1, class_covariance="task") for _ in range(2))
    for d in (once, each):
        d.build((None, 8))
    for t, (x, y) in enumerate(tasks):
        once.observe(x, y, t)
        each.observe(x, y, t)
        each.refresh()
    once.refresh()  # a stream: one refresh at the end
    np.testing.assert_allclose(once.class_kernel.numpy(), each.class_kernel.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(once.class_bias.numpy(), each.class_bias.numpy(), rtol=1e-5, atol=1e-5)


def test_each_tasks_own_covariance_classifies_better_where_tasks_differ():
    """The router alone in domain-IL on tasks with different covariances: the shared
    covariance averages them, each task's own keeps its; compared on held-out data."""
    train, test = _covariance_tasks(seed=0), _covariance_tasks(seed=1)
    accuracy = {}
    for covariance in ("shared", "task"):
        model = ClassStatisticsClassifier((8,), 3, rule="slda", shrinkage=0.1, task_groups=2,
                                             class_covariance=covariance)
        for t, (x, y) in enumerate(train):
            model.begin_task(t)
            model.observe(x, y)
        accuracy[covariance] = np.mean([(model(x).numpy().argmax(-1) == y).mean() for x, y in test])
    print("router alone", accuracy)
    assert accuracy["task"] > accuracy["shared"] + 0.03


def test_task_class_evidence_round_trips_through_saving(tmp_path):
    tasks = _covariance_tasks()
    model = le.engram_bnn((8,), 3, hidden=(32,), max_tasks=2, engram_fraction=0.5, lda_features=16,
                          lda_class_covariance="task")
    for t, (x, y) in enumerate(tasks):
        model.begin_task(t)
        model.compile(optimizer="adam", loss=LOSS)
        model.fit(x, y, batch_size=50, epochs=1, verbose=0)
    model.set_inference("infer")
    x = np.concatenate([t[0][:40] for t in tasks])
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    restored = tf.keras.models.load_model(path)
    assert restored.lda_class_covariance == "task"
    np.testing.assert_array_equal(restored.task_discriminant.class_kernel.numpy(),
                                  model.task_discriminant.class_kernel.numpy())
    np.testing.assert_allclose(restored.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)
    # the output's router part is the chosen task's own evidence
    chosen = model.infer_tasks(x).numpy()
    router = model.task_discriminant
    evidence = router.class_evidence(router.transform(model.flatten(x)), chosen).numpy()
    model.lda_weight, weight = 0.0, model.lda_weight
    model.set_inference("infer")
    networks = model.predict(x, verbose=0)
    model.lda_weight = weight
    model.set_inference("infer")
    log_softmax = lambda a: a - a.max(-1, keepdims=True) - np.log(np.exp(a - a.max(-1, keepdims=True)).sum(-1, keepdims=True))  # noqa: E731
    expected = log_softmax(log_softmax(networks) + weight * log_softmax(evidence))
    np.testing.assert_allclose(model.predict(x, verbose=0), np.log(1 - 1e-3 / 3) + expected, rtol=1e-4, atol=1e-4)


def _hand_set_router(shortlist):
    """A router on raw 2-d inputs (f(x) = x) with 3 engrams of 2 classes each, its groups
    set by hand: kernel rows k_{s,c}, biases b_{s,c}; engram 2's second class has no data."""
    router = InputDiscriminant(3, 2, features=None, shortlist=shortlist)
    router.build((None, 2))
    router.kernel.assign(np.array([[[1.0, 0.0], [-1.0, 0.0]],
                                   [[0.0, 3.0], [0.0, -3.0]],
                                   [[0.5, 0.5], [0.0, 0.0]]], np.float32))
    router.bias.assign(np.array([[0.0, 0.0], [-1.0, -1.0], [0.2, task_inference.EMPTY_GROUP_SCORE]], np.float32))
    return router


def test_the_shortlist_scores_only_the_engrams_whose_mean_group_is_best():
    # x = (2, 1): groups g = (2, -2 | 2, -4 | 1.7, empty): max per engram 2, 2, 1.7 -> engram 0 (first max).
    # Mean groups a_s = (0 | -1 | 1.7) (engram 2's one class with data): a shortlist of 1 keeps engram 2 only,
    # of 2 engrams 2 and 0, of 3 every engram.
    x = tf.constant([[2.0, 1.0]])
    mean_kernel, mean_bias = _hand_set_router(1).engram_means()
    np.testing.assert_allclose(mean_kernel.numpy(), [[0, 0], [0, 0], [0.5, 0.5]])
    np.testing.assert_allclose(mean_bias.numpy(), [0, -1, 0.2])
    for shortlist, engram in ((None, 0), (1, 2), (2, 0), (3, 0), (5, 0)):
        router = _hand_set_router(shortlist)
        scores = tf.reduce_max(router.feature_group_scores(x), axis=-1)
        assert int(router.route(x, scores)[0]) == engram, shortlist
    keep = _hand_set_router(2).shortlisted(x, tasks=[1, 2]).numpy()  # among engrams 1 and 2: both
    np.testing.assert_array_equal(keep, [[True, True]])
    # the runtime's NumPy twin keeps the same engrams
    np.testing.assert_array_equal(runtime.shortlisted(x.numpy(), mean_kernel.numpy(), mean_bias.numpy(), 1),
                                  [[False, False, True]])
    # the router alone: its classes come from the shortlisted engrams only
    np.testing.assert_allclose(_hand_set_router(1).predict_classes(x).numpy(), [[1.7, task_inference.EMPTY_GROUP_SCORE]])
    np.testing.assert_allclose(_hand_set_router(None).predict_classes(x).numpy(), [[2.0, -2.0]])


def test_a_shortlist_as_long_as_the_engrams_routes_as_every_group_does():
    data = [(x, y) for x, y in _shortlist_tasks()]
    routed = {}
    for shortlist in (None, 4, 1):
        model = le.engram_bnn((12,), 2, hidden=(16,), max_tasks=4, lda_features=24, router_shortlist=shortlist)
        for t, (x, y) in enumerate(data):
            model.begin_task(t)
            model.observe_task_data(x, y)
        model.set_inference("infer")
        routed[shortlist] = model.infer_tasks(np.concatenate([x for x, _ in data])).numpy()
    truth = np.repeat(np.arange(4), 100)
    np.testing.assert_array_equal(routed[4], routed[None])
    assert (routed[None] == truth).mean() > 0.95
    assert (routed[1] == truth).mean() > 0.9  # tasks that differ as a whole: their mean group finds them
    assert le.EngramModel.from_config(model.get_config()).router_shortlist == 1


def _shortlist_tasks(seed=0):
    rng = np.random.default_rng(seed)
    for t in range(4):
        center = rng.normal(size=12) * 3
        y = np.arange(100) % 2
        yield (center + rng.normal(size=(100, 12)) + y[:, None]).astype(np.float32), y.astype(np.int32)


def test_scoring_multiply_adds_count_the_shortlist():
    # K C M, and with a shortlist of k < K: K M + k C M (+ C M for a task's own evidence)
    assert task_inference.scoring_multiply_adds(100, 10, 768) == 100 * 10 * 768
    assert task_inference.scoring_multiply_adds(100, 10, 768, shortlist=16, task_evidence=True) == (
        100 * 768 + 16 * 10 * 768 + 10 * 768)
    assert task_inference.scoring_multiply_adds(10, 10, 768, shortlist=16) == 10 * 10 * 768
