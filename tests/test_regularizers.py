"""EWC, online EWC, SI and LwF against hand-computed values; every method by name."""
import numpy as np
import pytest
import tensorflow as tf

import larq_engrams as le
from larq_engrams import benchmarks as B
from larq_engrams import methods
from larq_engrams.models import EngramModel
from larq_engrams.optimizers import Adam
from larq_engrams.distillation import LearningWithoutForgetting, distillation_loss
from larq_engrams.regularizers import EWC, OnlineEWC, SynapticIntelligence, empirical_fisher
from larq_engrams.training import ContinualTrainer


def linear_model(weights):
    """logits = x @ W, W given (features x classes), no bias."""
    model = tf.keras.Sequential([tf.keras.Input((len(weights),)),
                                 tf.keras.layers.Dense(len(weights[0]), use_bias=False)])
    model.set_weights([np.array(weights, np.float32)])
    return model


def test_ewc_penalty_is_the_sum_over_past_tasks():
    model = linear_model([[1.0], [2.0]])  # theta = (1, 2)
    ewc = EWC(model, strength=4.0)
    fishers = iter([[np.array([[0.5], [1.0]], np.float32)], [np.array([[2.0], [0.0]], np.float32)]])
    ewc.fisher = lambda dataset: next(fishers)
    ewc.consolidate(0, None)                       # task 0: theta* = (1, 2), F = (0.5, 1)
    model.set_weights([np.array([[3.0], [0.0]], np.float32)])
    ewc.consolidate(1, None)                       # task 1: theta* = (3, 0), F = (2, 0)
    model.set_weights([np.array([[2.0], [1.0]], np.float32)])  # theta = (2, 1)
    # lambda/2 * [0.5 (2-1)^2 + 1 (1-2)^2 + 2 (2-3)^2 + 0 (1-0)^2] = 2 * 3.5 = 7
    assert float(ewc.penalty()) == pytest.approx(7.0, rel=1e-6)
    assert float(tf.add_n(model.losses)) == pytest.approx(7.0, rel=1e-6)


def test_online_ewc_decays_the_running_fisher():
    model = linear_model([[1.0], [2.0]])
    online = OnlineEWC(model, strength=2.0, gamma=0.5)
    fishers = iter([[np.array([[4.0], [2.0]], np.float32)], [np.array([[1.0], [1.0]], np.float32)]])
    online.fisher = lambda dataset: next(fishers)
    online.consolidate(0, None)
    model.set_weights([np.array([[0.0], [1.0]], np.float32)])
    online.consolidate(1, None)                    # F~ = 0.5 (4, 2) + (1, 1) = (3, 2); theta* = (0, 1)
    np.testing.assert_allclose(online.running_fisher[0].numpy().ravel(), [3.0, 2.0])
    model.set_weights([np.array([[1.0], [3.0]], np.float32)])
    # lambda/2 * [3 (1-0)^2 + 2 (3-1)^2] = 1 * 11 = 11
    assert float(online.penalty()) == pytest.approx(11.0, rel=1e-6)


def test_empirical_fisher_of_a_linear_softmax_model():
    W = np.array([[0.2, -0.1, 0.4], [0.3, 0.5, -0.2]], np.float32)
    x = np.array([[1.0, 2.0], [-1.0, 0.5], [0.3, -0.7]], np.float32)
    y = np.array([2, 0, 1])
    model = linear_model(W)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(2)
    fisher = empirical_fisher(model, model.trainable_variables, dataset, num_samples=3)[0].numpy()
    # d log p_y / dW = x (onehot(y) - softmax(x W))^T, squared and averaged by hand:
    expected = np.zeros_like(W)
    for xi, yi in zip(x, y):
        z = xi @ W
        p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        expected += np.outer(xi, np.eye(3)[yi] - p) ** 2
    np.testing.assert_allclose(fisher, expected / 3, rtol=1e-5)


def test_si_path_integral_on_a_quadratic_loss():
    # L(theta) = 1/2 sum a_i theta_i^2, trained with Adam; omega = sum_steps -g * Delta.
    a = np.array([1.0, 3.0], np.float32)
    model = linear_model([[1.0], [-2.0]])
    si = SynapticIntelligence(model, strength=1.0, damping=0.1)
    optimizer = Adam(0.1)
    si.optimizer = optimizer
    theta = model.trainable_variables[0]
    reference_omega = np.zeros(2)
    start = theta.numpy().ravel().copy()
    for step in range(5):
        si.on_train_batch_begin(step)
        before = theta.numpy().ravel().copy()
        with tf.GradientTape() as tape:
            loss = 0.5 * tf.reduce_sum(a * tf.square(tf.reshape(theta, [-1])))
        grad = tape.gradient(loss, [theta])
        optimizer.apply_gradients(zip(grad, [theta]))
        si.on_train_batch_end(step)
        reference_omega += -(a * before) * (theta.numpy().ravel() - before)  # g = a * theta_before
    np.testing.assert_allclose(si.omega[0].numpy().ravel(), reference_omega, rtol=1e-4)
    assert np.all(reference_omega > 0)  # each step decreased the loss along every axis
    end = theta.numpy().ravel()
    si.consolidate(0, None)
    expected_importance = reference_omega / ((end - start) ** 2 + 0.1)
    np.testing.assert_allclose(si.importance[0].numpy().ravel(), expected_importance, rtol=1e-4)
    np.testing.assert_allclose(si.anchor[0].numpy().ravel(), end)
    assert np.all(si.omega[0].numpy() == 0)
    model.set_weights([np.array([[0.0], [0.0]], np.float32)])
    assert float(si.penalty()) == pytest.approx(float(np.sum(expected_importance * end**2)), rel=1e-4)


def test_si_needs_an_adam_family_optimizer():
    model = linear_model([[1.0]])
    si = SynapticIntelligence(model, strength=1.0)
    si.optimizer = tf.keras.optimizers.SGD(0.1)
    with pytest.raises(TypeError, match="Adam"):
        si.on_train_batch_begin(0)


def test_lwf_distillation_target():
    # T = 1: teacher logits (0, ln 3) -> targets (1/4, 3/4); student (0, 0) -> log(1/2) each:
    # L = -(1/4 + 3/4) log(1/2) = ln 2.
    teacher = tf.constant([[0.0, np.log(3.0)]])
    student = tf.constant([[0.0, 0.0]])
    assert float(distillation_loss(teacher, student, 1.0)) == pytest.approx(np.log(2.0), rel=1e-6)
    # T = 2: targets softmax((0, ln 3)/2) = (1, sqrt 3)/(1 + sqrt 3); student still uniform;
    # L = -4 * log(1/2) = 4 ln 2.
    assert float(distillation_loss(teacher, student, 2.0)) == pytest.approx(4 * np.log(2.0), rel=1e-6)


def test_lwf_distillation_over_old_classes_only():
    # Old classes {0, 1} of three: teacher (0, ln 3, 5) -> targets over {0, 1}: (1/4, 3/4);
    # student (0, 0, -7) -> log softmax over {0, 1}: log(1/2) each -> L = ln 2 at T = 1.
    teacher = tf.constant([[0.0, np.log(3.0), 5.0]])
    student = tf.constant([[0.0, 0.0, -7.0]])
    old = tf.constant([1.0, 1.0, 0.0])
    assert float(distillation_loss(teacher, student, 1.0, old)) == pytest.approx(np.log(2.0), rel=1e-6)
    model = linear_model([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5]])
    lwf = LearningWithoutForgetting(model)
    lwf.update_teacher(classes=(0, 1))
    np.testing.assert_array_equal(lwf.old_classes.numpy(), [1, 1, 0])
    lwf.update_teacher(classes=(2,))
    np.testing.assert_array_equal(lwf.old_classes.numpy(), [1, 1, 1])


def test_lwf_teacher_is_frozen_until_updated():
    model = linear_model([[1.0, 0.0], [0.0, 1.0]])
    lwf = LearningWithoutForgetting(model, temperature=2.0)
    x = tf.constant([[1.0, 2.0]])
    lwf(x, training=True)
    assert float(tf.add_n(lwf.losses)) == 0.0  # no distillation during the first task
    lwf.update_teacher()
    model.set_weights([np.array([[0.0, 1.0], [1.0, 0.0]], np.float32)])  # the student moves
    lwf(x, training=True)
    expected = distillation_loss(tf.constant([[1.0, 2.0]]), tf.constant([[2.0, 1.0]]), 2.0)
    assert float(tf.add_n(lwf.losses)) == pytest.approx(float(expected), rel=1e-6)


def scenario_for(name):
    setting = "task" if name == "xdg" else "class"
    return B.split_mnist(setting, source="bundled", batch_size=64).take(2)


@pytest.mark.parametrize("name", methods.names())
def test_every_method_runs_through_model_fit(name):
    scenario = scenario_for(name)
    setup = methods.build(name, scenario, hidden=(32,), fisher_samples=20)
    accuracy = le.callbacks.AccuracyMatrixCallback(setup.scenario)
    loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    for task in setup.scenario:
        if isinstance(setup.model, EngramModel):
            setup.model.begin_task(task.task_id)
        setup.model.compile(optimizer=setup.optimizer(), loss=loss)
        setup.model.fit(task.train, epochs=1, verbose=0, callbacks=[*setup.callbacks, accuracy])
    R = accuracy.result().R
    no_engram_yet = isinstance(setup.model, EngramModel) and scenario.provides_task_id
    assert np.isfinite(R[np.tril_indices(2)]).all() and np.isnan(R[0, 1]) == no_engram_yet and R[0, 0] > 0.6, R
    for callback in setup.callbacks:
        if hasattr(callback, "consolidated_tasks"):
            assert callback.consolidated_tasks == [0, 1]


@pytest.mark.parametrize("name", ["ewc", "online_ewc", "si", "lwf"])
def test_regularizers_on_the_binarized_backbone_act_on_hidden_weights(name):
    scenario = scenario_for(name)
    setup = methods.build(name, scenario, hidden=(32,), fisher_samples=20, backbone="bnn")
    kernels = [v for v in setup.model.trainable_variables if getattr(v, "precision", None) == 1]
    assert kernels, "a Larq BNN"
    result = ContinualTrainer(setup.model, setup.optimizer, callbacks=setup.callbacks, verbose=0).fit(setup.scenario)
    assert np.isfinite(result.R).all() and result.R[0, 0] > 0.6
    if name == "lwf":
        return
    penalty = setup.callbacks[0]
    # The penalty is a function of the real-valued hidden weights (not of their signs):
    # nudging one hidden weight without flipping its sign changes it.
    kernel = next(v for v in penalty.penalized_variables if getattr(v, "precision", None) == 1)
    before = float(penalty.penalty())
    hidden = kernel.latent_variable
    hidden.assign(hidden * 1.5)
    assert float(penalty.penalty()) != before


def test_xdg_refuses_settings_without_task_id():
    with pytest.raises(ValueError, match="task"):
        methods.build("xdg", B.split_mnist("class", source="bundled").take(2), hidden=(16,))
