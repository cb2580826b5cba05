"""Sparse execution (the engram's sub-network only) against the masked reference."""
import numpy as np
import pytest
import tensorflow as tf

import larq_engrams as le
from larq_engrams.optimizers import Adam
from larq_engrams.block_updates import Block, apply_block_gradients, supports_block_updates
from larq_engrams.subnetwork import EngramSubnetwork, StackedEngramSubnetworks
from larq_engrams.training import train_step

LOSS = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
OVERLAPPING = dict(engram_fraction=0.6, excitability=0.0)  # shared units between engrams
DISJOINT = dict(engram_fraction=0.3, excitability=50.0)


def model_pair(engrams, activation_probability=0.8, hidden=(24, 16)):
    models = [
        # Unprotected: the masked reference has no blocks to freeze.
        le.engram_bnn((12,), 4, hidden=hidden, max_tasks=3, seed=3, execution=execution, lda_features=64,
                      activation_probability=activation_probability, protect_engrams=False, **engrams)
        for execution in ("sparse", "masked")
    ]
    models[1].set_weights(models[0].get_weights())
    return models


def task_data(task, n=64):
    rng = np.random.default_rng(task)
    x = rng.normal(size=(n, 12)).astype(np.float32) + task
    y = rng.integers(0, 4, n).astype(np.int32)
    return x, y


def train(model, optimizer, task, steps=6, cached=False):
    """`steps` steps of `train_step`; with `cached`, the moments are held compact in
    two "epochs" (load, steps, flush), as fit and the trainer do."""
    model.begin_task(task)
    step = tf.function(lambda x, y: train_step(model, optimizer, x, y))
    x, y = task_data(task)
    model.observe_task_data(x, y)  # task inference's statistics ("infer" below)
    for i in range(steps):
        if cached and i % 3 == 0:
            model.load_engram_slots(optimizer)
        batch = slice(16 * (i % 4), 16 * (i % 4) + 16)
        step(tf.constant(x[batch]), tf.constant(y[batch]))
        if cached and i % 3 == 2:
            model.flush_engram_slots()


def assert_same_state(sparse, masked, sparse_opt, masked_opt):
    # atol 1e-5 on weights of scale 0.05: float32 rounding of the two summation orders
    # over 18 metaplastic steps reaches 2e-6 on some CPUs (measured), a sign flip would
    # move a weight by ~lr = 1e-2.
    for a, b in zip(sparse.weights, masked.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5, err_msg=a.name)
    for a, b in zip(sparse_opt.variables(), masked_opt.variables()):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5, err_msg=a.name)


def _adam():
    return Adam(0.01)


def _metaplastic_adam():
    return le.MetaplasticAdam(0.01, m=2.0)


# Every pair of the three factors' levels (optimizer, engrams, slot cache) in 4 runs
# instead of 8: each factor interacts with each other one at both levels.
@pytest.mark.parametrize("make_optimizer, engrams, cached", [
    (_adam, OVERLAPPING, True),
    (_adam, DISJOINT, False),
    (_metaplastic_adam, OVERLAPPING, False),
    (_metaplastic_adam, DISJOINT, True),
], ids=["adam-overlapping-compact_slots", "adam-disjoint-slots_in_place",
        "metaplastic_adam-overlapping-slots_in_place", "metaplastic_adam-disjoint-compact_slots"])
def test_sparse_training_equals_masked_training(engrams, make_optimizer, cached):
    sparse, masked = model_pair(engrams)
    for task in range(3):  # a fresh optimizer per task, as the trainer's default
        opts = make_optimizer(), make_optimizer()
        train(sparse, opts[0], task, cached=cached)
        train(masked, opts[1], task)
        assert_same_state(sparse, masked, *opts)
    # Training did move the weights and statistics.
    assert not np.allclose(sparse.engram_layers[0].moving_mean.numpy(), 0.0)
    x, _ = task_data(1)
    for mode in ("infer", "union"):
        for model in (sparse, masked):
            model.set_inference(mode)
        np.testing.assert_allclose(sparse.predict(x, verbose=0), masked.predict(x, verbose=0), rtol=1e-5, atol=1e-5)
    for task in range(3):
        for model in (sparse, masked):
            model.set_inference("task", task=task)
        np.testing.assert_allclose(sparse.predict(x, verbose=0), masked.predict(x, verbose=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(sparse.infer_tasks(x).numpy(), masked.infer_tasks(x).numpy())


def test_sparse_fit_equals_masked_fit():
    sparse, masked = model_pair(OVERLAPPING)
    for task in range(2):
        x, y = task_data(task)
        for model in (sparse, masked):
            model.begin_task(task)
            model.compile(optimizer=le.MetaplasticAdam(0.01, m=1.0), loss=LOSS, metrics=["accuracy"])
        hs = [m.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0).history for m in (sparse, masked)]
        np.testing.assert_allclose(hs[0]["loss"], hs[1]["loss"], rtol=1e-5)
        assert hs[0]["accuracy"] == hs[1]["accuracy"]
        assert_same_state(sparse, masked, sparse.optimizer, masked.optimizer)


def test_a_kept_optimizer_moves_nothing_outside_the_engram_in_sparse_execution():
    """With one optimizer across tasks, the masked step keeps moving the previous
    engram's weights by Adam's decaying momentum; the sparse step moves only the
    current engram's blocks, weights and slots alike."""
    sparse, masked = model_pair(DISJOINT)
    opts = Adam(0.01), Adam(0.01)
    for model, opt in zip((sparse, masked), opts):
        train(model, opt, 0)
    before = [[v.numpy().copy() for v in m.trainable_variables] for m in (sparse, masked)]
    slots_before = [v.numpy().copy() for v in opts[0].variables()]
    for model, opt in zip((sparse, masked), opts):
        train(model, opt, 1)
    layer = sparse.engram_layers[0]
    outside = ~layer.engram_mask(1)  # hidden_0's units outside engram 1
    kernel_index = [v.name for v in sparse.trainable_variables].index(layer.dense.kernel.name)
    sparse_after = sparse.trainable_variables[kernel_index].numpy()
    masked_after = masked.trainable_variables[kernel_index].numpy()
    np.testing.assert_array_equal(sparse_after[:, outside], before[0][kernel_index][:, outside])
    assert np.abs(masked_after[:, outside] - before[1][kernel_index][:, outside]).max() > 1e-4
    m_index = [v.name for v in opts[0].variables()].index(opts[0]._momentums[kernel_index].name)
    np.testing.assert_array_equal(opts[0].variables()[m_index].numpy()[:, outside], slots_before[m_index][:, outside])


def test_penalties_and_other_optimizers_fall_back_to_the_dense_step():
    sparse, masked = model_pair(OVERLAPPING)
    for model in (sparse, masked):  # an EWC-like penalty reaching every weight
        model.add_loss(lambda model=model: 0.1 * tf.add_n([tf.reduce_sum(tf.square(v)) for v in model.trainable_variables]))
    opts = tf.keras.optimizers.SGD(0.05, momentum=0.9), tf.keras.optimizers.SGD(0.05, momentum=0.9)
    assert not supports_block_updates(opts[0])
    train(sparse, opts[0], 0)
    train(masked, opts[1], 0)
    assert_same_state(sparse, masked, *opts)
    opts = Adam(0.01), Adam(0.01)
    train(sparse, opts[0], 1)
    train(masked, opts[1], 1)
    assert_same_state(sparse, masked, *opts)


def test_block_adam_step_by_hand():
    """One block step of Adam against the formula; entries outside stay put."""
    var = tf.Variable(np.arange(12, dtype=np.float32).reshape(3, 4) / 10 - 0.5)
    start = var.numpy().copy()
    opt = Adam(0.1)
    rows, cols = tf.constant([0, 2]), tf.constant([1, 3])
    grad = np.array([[1.0, -2.0], [0.5, 3.0]], np.float32)
    apply_block_gradients(opt, [tf.constant(grad)], [Block(var, rows, cols)], [var])
    m = 0.1 * grad
    v = 0.001 * grad**2
    alpha = 0.1 * np.sqrt(1 - 0.999) / (1 - 0.9)
    expected = start.copy()
    expected[np.ix_([0, 2], [1, 3])] -= alpha * m / (np.sqrt(v) + 1e-7)
    np.testing.assert_allclose(var.numpy(), expected, rtol=1e-6)
    assert int(opt.iterations) == 1
    momentum = opt.variables()[1].numpy()
    np.testing.assert_allclose(momentum[np.ix_([0, 2], [1, 3])], m, rtol=1e-6)
    assert np.count_nonzero(momentum) == 4


def test_metaplastic_block_step_attenuates_only_shrinking_updates():
    var = tf.Variable([[0.8, -0.8], [0.8, -0.8]])
    opt = le.MetaplasticAdam(0.01, m=1.5, binary_kernel_predicate=lambda v: True)
    grad = tf.constant([[1.0, 1.0]])  # row 1: toward 0 for +0.8, away from 0 for -0.8
    apply_block_gradients(opt, [grad], [Block(var, tf.constant([1]))], [var])
    step = 0.01 * (0.1 / (np.sqrt(0.001) + 1e-7)) * np.sqrt(1 - 0.999) / (1 - 0.9)
    f_meta = 1 - np.tanh(1.5 * 0.8) ** 2
    np.testing.assert_allclose(var.numpy(), [[0.8, -0.8], [0.8 - f_meta * step, -0.8 - step]], rtol=1e-5)


def test_subnetwork_holds_the_engram_blocks():
    sparse, _ = model_pair(DISJOINT, hidden=(20, 10))
    sparse.begin_task(0)
    sub = EngramSubnetwork(sparse, tf.constant(0))
    e1, e2 = (np.flatnonzero(m) for m in sparse.engram_masks(0).values())
    shapes = [tuple(w.shape) for w in sub.weights]
    assert shapes == [(12, len(e1)), (len(e1),), (len(e1),), (len(e1), len(e2)), (len(e2),), (len(e2),),
                      (len(e2), 4), (4,), (4,)]
    kernel = sparse.engram_layers[1].dense.kernel.latent_variable.numpy()
    np.testing.assert_array_equal(sub.weights[3].numpy(), kernel[np.ix_(e1, e2)])


def test_execution_is_validated_and_serialized(tmp_path):
    with pytest.raises(ValueError, match="execution"):
        le.engram_bnn((4,), 2, hidden=(8,), execution="dense")
    model = le.engram_bnn((4,), 2, hidden=(8,), max_tasks=1, execution="masked", protect_engrams=False)
    assert le.EngramModel.from_config(model.get_config()).execution == "masked"


def test_trainer_runs_the_sparse_path_to_the_masked_result():
    from larq_engrams import benchmarks
    from larq_engrams.training import ContinualTrainer

    def scenario():  # fresh per run: a dataset's seeded reshuffle continues across iterations
        return benchmarks.split_mnist("class", source="bundled", batch_size=64).take(2)

    models = [
        le.engram_bnn((28, 28), 10, hidden=(48, 32), max_tasks=2, engram_fraction=0.4, lda_features=256,
                      execution=execution, seed=1, protect_engrams=False)
        for execution in ("sparse", "masked")
    ]
    models[1].set_weights(models[0].get_weights())
    results = []
    for model in models:
        trainer = ContinualTrainer(model, lambda: le.MetaplasticAdam(0.005, m=1.3), epochs=2, verbose=0)
        results.append(trainer.fit(scenario()))
    # The step-level tests above match to 1e-5; over ~100 steps the two summation orders
    # (x @ W[:, E] against (x @ W)[:, E]) let a pre-activation near 0 take the other
    # sign now and then, so the runs drift apart slightly: measured 3 of 437 test
    # predictions after task 1, and 1 of 437 after task 0 (where the training order
    # is the one after task inference's pass over the data).
    np.testing.assert_allclose(results[0].R[0], results[1].R[0], atol=0.005)
    np.testing.assert_allclose(results[0].R, results[1].R, atol=0.02)


def test_a_step_traced_with_the_cache_closed_refuses_to_run_while_it_is_open():
    sparse, _ = model_pair(DISJOINT)
    sparse.begin_task(0)
    opt = Adam(0.01)
    step = tf.function(lambda x, y: train_step(sparse, opt, x, y))
    x, y = task_data(0, 16)
    step(x, y)
    assert sparse.load_engram_slots(opt)
    with pytest.raises(tf.errors.InvalidArgumentError, match="retrace"):
        step(x, y)
    sparse.flush_engram_slots()


def test_slot_cache_is_not_used_when_steps_cannot_be_block_sparse():
    sparse, masked = model_pair(DISJOINT)
    for model in (sparse, masked):
        model.begin_task(0)
    assert sparse.load_engram_slots(Adam()) is True
    sparse.flush_engram_slots()
    assert sparse.load_engram_slots(tf.keras.optimizers.SGD()) is False
    assert sparse.load_engram_slots(Adam(clipnorm=1.0)) is False
    assert masked.load_engram_slots(Adam()) is False


def test_infer_never_serves_blocks_of_older_weights():
    sparse, masked = model_pair(OVERLAPPING)
    x, _ = task_data(1)

    def same_predictions():
        for model in (sparse, masked):
            model.set_inference("infer")
        predict = [tf.function(lambda a, m=m: m(a, training=False)) for m in (sparse, masked)]
        np.testing.assert_allclose(predict[0](x).numpy(), predict[1](x).numpy(), rtol=1e-5, atol=1e-5)
        return predict

    for task in range(2):
        for model in (sparse, masked):
            train(model, Adam(0.01), task)
    predict = same_predictions()
    before = predict[0](x).numpy()
    for model in (sparse, masked):  # more training: the cached blocks must be dropped
        x1, y1 = task_data(1)
        model.compile(optimizer=Adam(0.05), loss=LOSS)
        model.fit(x1, y1, batch_size=16, epochs=2, shuffle=False, verbose=0)
    after = predict[0](x).numpy()  # the same traced function, new weights
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, predict[1](x).numpy(), rtol=1e-5, atol=1e-5)
    weights = [-w if "kernel" in v.name else w for v, w in zip(sparse.weights, sparse.get_weights())]
    for model in (sparse, masked):
        model.set_weights(weights)
    np.testing.assert_allclose(predict[0](x).numpy(), predict[1](x).numpy(), rtol=1e-5, atol=1e-5)


def test_infer_runs_each_sample_through_its_chosen_engram_only():
    """With the router choosing, "infer" runs only the chosen engram per sample: its
    output equals every engram's network run on the whole batch and the chosen one
    picked, exactly, in both executions; an engram no sample chooses changes nothing."""
    for model in model_pair(OVERLAPPING):
        for task in range(3):
            train(model, Adam(0.01), task)
        model.lda_weight, model.restrict_to_engram_classes = 0.0, False  # the chosen engram's own logits
        model.set_inference("infer")
        x = np.concatenate([task_data(t, 20)[0] for t in (0, 2)])  # engram 1 is chosen by none (or few)
        chosen = model.infer_tasks(x).numpy()
        every = StackedEngramSubnetworks(model, [0, 1, 2])(tf.constant(x)).numpy()  # (3, batch, classes)
        np.testing.assert_array_equal(model(x, training=False).numpy(), every[chosen, np.arange(len(x))])
        assert len(set(chosen)) >= 2


def test_task_scoped_moments_equal_the_masked_reference_and_keep_no_full_slots():
    from larq_engrams.block_updates import _moments, gather_block, has_slots

    sparse, masked = model_pair(OVERLAPPING)
    for task in range(2):
        opts = _metaplastic_adam(), _metaplastic_adam()
        sparse.begin_task(task)
        assert sparse.build_task_optimizer(opts[0]) is True
        blocked = sparse.engram_block_variables()
        assert sorted(v.name for v in blocked) == sorted(
            v.name for v in sparse.trainable_variables if not v.name.startswith("output_bn/"))
        assert not any(has_slots(opts[0], v) for v in blocked)
        # The slots kept are the small ones (output BatchNorm, step count): a few dozen numbers.
        kept = sum(int(np.prod(v.shape)) for v in opts[0].variables())
        assert kept < 0.05 * sum(int(np.prod(v.shape)) for v in blocked)
        train(sparse, opts[0], task, cached=True)  # its flushes between "epochs" keep the moments
        train(masked, opts[1], task)
        cache = sparse.slot_cache
        assert cache.is_open and cache.task_scoped  # held until the task ends
        for a, b in zip(sparse.weights, masked.weights):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5, err_msg=a.name)
        index = {v.name: i for i, v in enumerate(sparse.trainable_variables)}
        for i, block in enumerate(cache.blocks):
            reference = masked.trainable_variables[index[block.variable.name]]
            for compact, full in zip(cache.slots(i)[:2], _moments(opts[1], reference)):
                np.testing.assert_allclose(compact.numpy(), gather_block(full, block.rows, block.cols).numpy(),
                                           rtol=1e-5, atol=1e-6, err_msg=block.variable.name)
        # TensorBoard's attenuated fractions come from the cache, as the full slots give them.
        reference = opts[1].attenuated_fractions()
        assert set(reference) == {"hidden_0/kernel", "hidden_1/kernel", "output/kernel"}
        assert cache.attenuated_fractions() == pytest.approx(reference)
        assert opts[0].attenuated_fractions() == {}  # no slots for them
    sparse.begin_task(0)  # a task's end drops its moments
    assert not sparse.slot_cache.is_open


def test_an_optimizer_without_slots_for_the_blocks_needs_the_cache():
    sparse, _ = model_pair(DISJOINT)
    sparse.begin_task(0)
    opt = Adam(0.01)
    sparse.build_task_optimizer(opt)
    step = tf.function(lambda x, y: train_step(sparse, opt, x, y))
    x, y = task_data(0, 16)
    with pytest.raises(RuntimeError, match="task-scoped moments"):
        step(x, y)
    # An optimizer built on every variable first stays so: nothing is task-scoped.
    full = Adam(0.01)
    full.build(sparse.trainable_variables)
    assert sparse.build_task_optimizer(full) is False


def test_fit_with_task_scoped_moments_equals_masked_fit():
    sparse, masked = model_pair(OVERLAPPING)
    for task in range(2):
        x, y = task_data(task)
        for model in (sparse, masked):
            model.begin_task(task)
            model.compile(optimizer=le.MetaplasticAdam(0.01, m=1.0), loss=LOSS)
        assert sparse.build_task_optimizer(sparse.optimizer)  # fresh per task, as compiled above
        hs = [m.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0).history for m in (sparse, masked)]
        np.testing.assert_allclose(hs[0]["loss"], hs[1]["loss"], rtol=1e-5)
        for a, b in zip(sparse.weights, masked.weights):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5, err_msg=a.name)
