"""MetaplasticAdam against a NumPy reference of docs/method.md, section 2."""
import os

import larq as lq
import numpy as np
import pytest
import tensorflow as tf

from larq_engrams import MetaplasticAdam, bnn, engram_bnn
from larq_engrams.block_updates import supports_block_updates
from larq_engrams.optimizers import Adam, as_readable_adam, parse_strength

LR, B1, B2, EPS = 0.01, 0.9, 0.999, 1e-7


def reference_metaplastic_adam(w, grads, m, lr=LR, b1=B1, b2=B2, eps=EPS):
    """docs/method.md, section 2 in NumPy (Keras' Adam parameterization of the step)."""
    w = np.array(w, np.float64)
    m_t = np.zeros_like(w)
    v_t = np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        m_t = m_t + (g - m_t) * (1 - b1)
        v_t = v_t + (np.square(g) - v_t) * (1 - b2)
        alpha = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
        shrinks = np.sign(w) * m_t > 0
        f_meta = 1 - np.tanh(m * np.abs(w)) ** 2
        w = w - alpha * np.where(shrinks, f_meta * m_t, m_t) / (np.sqrt(v_t) + eps)
    return w


def binary_kernel(values, name="binary"):
    """A Larq binary kernel (QuantizedVariable, precision 1) holding `values` as W_h."""
    layer = lq.layers.QuantDense(
        len(values),
        use_bias=False,
        kernel_quantizer=lq.quantizers.SteSign(clip_value=None),
        name=name,
    )
    with tf.name_scope(name):
        layer.build((None, 1))
    layer.kernel.assign(np.array([values], np.float32))
    return layer.kernel


def run(optimizer, variable, grads):
    for g in grads:
        optimizer.apply_gradients([(tf.constant(np.array([g], np.float32)), variable)])
    return tf.convert_to_tensor(variable).numpy()[0]  # latent W_h outside quantized scope


# W_h: positive, negative, zero, large positive, tiny negative.
W0 = [0.5, -0.5, 0.0, 2.0, -0.01]
# Step 1 shrinks W[0] (g > 0 on W > 0) and grows W[1] (g > 0 on W < 0 pushes it further
# negative); later steps flip directions so both branches act on every weight.
GRADS = [
    [1.0, 1.0, 1.0, 1.0, -1.0],
    [0.5, -2.0, -1.0, 3.0, 0.2],
    [-1.0, -1.0, 0.3, 1.0, 1.0],
    [2.0, 0.1, -0.5, -4.0, -0.3],
]


def test_one_step_matches_hand_computed_values():
    # One Adam step moves each weight by about lr in the gradient's sign (m1/sqrt(v1) =
    # sign(g)); metaplasticity scales the shrinking ones by 1 - tanh^2(1.3 |W|):
    #   W=0.5 shrinks:  f = 1 - tanh^2(0.65) = 0.673193     -> 0.5 - 0.01 * 0.673193
    #   W=-0.5 grows:   f unused                           -> -0.5 - 0.01
    #   W=0 (sign 0):   never attenuated                   -> -0.01
    #   W=2.0 shrinks:  f = 1 - tanh^2(2.6) = 0.0218248    -> 2.0 - 0.01 * 0.0218248
    #   W=-0.01, g<0:   shrinks, f = 1 - tanh^2(0.013) = 0.999831 -> -0.01 + 0.01 * 0.999831
    expected = [0.49326807, -0.51, -0.01, 1.99978175, -0.00000169]
    var = binary_kernel(W0)
    got = run(MetaplasticAdam(LR, m=1.3), var, GRADS[:1])
    np.testing.assert_allclose(got, expected, atol=2e-7)


@pytest.mark.parametrize("m", [0.7, 1.3, 3.0])
def test_several_steps_match_numpy_reference(m):
    var = binary_kernel(W0)
    got = run(MetaplasticAdam(LR, m=m), var, GRADS)
    want = reference_metaplastic_adam(W0, np.array(GRADS), m)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    # And the attenuation acted: plain Adam ends elsewhere.
    plain = reference_metaplastic_adam(W0, np.array(GRADS), 0.0)
    assert np.abs(got - plain).max() > 1e-3


def test_growth_is_never_attenuated():
    # Gradients that only ever grow |W_h|: identical to Adam whatever m.
    grads = [[-1.0, 1.0, -0.5], [-0.2, 3.0, -1.0], [-2.0, 0.4, -0.1]]
    w0 = [0.3, -0.8, 1.5]
    got = run(MetaplasticAdam(LR, m=10.0), binary_kernel(w0), grads)
    np.testing.assert_allclose(got, reference_metaplastic_adam(w0, np.array(grads), 0.0), rtol=1e-6)


def _fit_copy(optimizer, model_fn, data, steps=6):
    tf.keras.utils.set_random_seed(7)
    model = model_fn()
    model.compile(
        optimizer=optimizer,
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x, y = data
    model.fit(x, y, batch_size=len(x) // steps, epochs=1, shuffle=False, verbose=0)
    return model


@pytest.fixture
def toy_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 12)).astype(np.float32)
    y = (x[:, :3].sum(axis=1) > 0).astype(np.int32) + (x[:, 3] > 1).astype(np.int32)
    return x, y


def test_m_zero_is_exactly_adam(toy_data):
    def make():
        return bnn((12,), 3, hidden=(32, 16))

    meta = _fit_copy(MetaplasticAdam(LR, m=0.0), make, toy_data)
    adam = _fit_copy(tf.keras.optimizers.Adam(LR), make, toy_data)
    for a, b in zip(meta.get_weights(), adam.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # The run really trained: weights moved from their initial values.
    tf.keras.utils.set_random_seed(7)
    init = make().get_weights()
    assert max(np.abs(a - b).max() for a, b in zip(meta.get_weights(), init)) > 1e-2


def _apply_same_gradients(opt_a, opt_b, make, steps=3):
    """Two identical models, identical gradients; returns their variables after."""
    tf.keras.utils.set_random_seed(3)
    a = make()
    b = make()
    b.set_weights(a.get_weights())
    rng = np.random.default_rng(1)
    for _ in range(steps):
        grads = [rng.normal(size=v.shape).astype(np.float32) for v in a.trainable_variables]
        opt_a.apply_gradients(zip(grads, a.trainable_variables))
        opt_b.apply_gradients(zip(grads, b.trainable_variables))
    return a, b


def test_per_layer_m_and_untouched_batchnorm():
    def make():
        return bnn((4,), 3, hidden=(6, 5))

    a, b = _apply_same_gradients(
        MetaplasticAdam(LR, m={"hidden_0": 2.0}), tf.keras.optimizers.Adam(LR), make
    )
    by_name = lambda model: {v.name: tf.convert_to_tensor(v).numpy() for v in model.trainable_variables}  # noqa: E731
    meta, plain = by_name(a), by_name(b)
    # Attenuated: only hidden_0's kernel. hidden_1, output kernel (m=0 by omission) and
    # every BatchNorm gamma/beta get exactly Adam's update.
    assert np.abs(meta["hidden_0/kernel:0"] - plain["hidden_0/kernel:0"]).max() > 1e-4
    for name in meta:
        if name != "hidden_0/kernel:0":
            np.testing.assert_allclose(meta[name], plain[name], atol=1e-7, err_msg=name)


def test_per_layer_m_matches_reference_per_kernel():
    layer_a = binary_kernel([0.4, -0.2], name="layer_a")
    layer_b = binary_kernel([0.4, -0.2], name="layer_b")
    assert layer_a.name == "layer_a/kernel:0"
    opt = MetaplasticAdam(LR, m={"layer_a": 1.0})
    grads = [[1.0, -1.0], [0.5, 2.0]]
    for g in grads:
        opt.apply_gradients(
            [(tf.constant([g], tf.float32), layer_a), (tf.constant([g], tf.float32), layer_b)]
        )
    np.testing.assert_allclose(
        tf.convert_to_tensor(layer_a).numpy()[0],
        reference_metaplastic_adam([0.4, -0.2], np.array(grads), 1.0),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        tf.convert_to_tensor(layer_b).numpy()[0],
        reference_metaplastic_adam([0.4, -0.2], np.array(grads), 0.0),
        rtol=1e-6,
    )


def test_strengths_report_the_attenuated_kernels():
    model = engram_bnn((4,), 2, hidden=(8, 8), max_tasks=2)
    opt = MetaplasticAdam(LR, m={"hidden_*": 1.5, "hidden_1/kernel": 2.0})
    opt.build(model.trainable_variables)
    assert opt.metaplastic_strengths() == {"hidden_0/kernel": 1.5, "hidden_1/kernel": 2.0}


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(m=-0.1), "`m`"),
        (dict(m=float("nan")), "`m`"),
        (dict(m="strong"), "`m`"),
        (dict(m={}), "`m`"),
        (dict(m={"hidden_0": -1.0}), "`m`"),
        (dict(learning_rate=0.0), "`learning_rate`"),
        (dict(learning_rate=-1e-3), "`learning_rate`"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        MetaplasticAdam(**kwargs)


@pytest.mark.parametrize(
    "text, separator, expected",
    [(" 1.3 ", ",", 1.3), ("0", ",", 0.0), ("hidden_0=1.3,hidden_1=1.5", ",", {"hidden_0": 1.3, "hidden_1": 1.5}),
     ("output=10+hidden_1=2", "+", {"output": 10.0, "hidden_1": 2.0})],
)
def test_parse_strength_reads_the_command_line_forms(text, separator, expected):
    assert parse_strength(text, separator) == expected


@pytest.mark.parametrize("text", ["-2", "strong", "nan", "hidden_0", "=1.3", "hidden_0=1=2", "hidden_0=-1",
                                  "hidden_0=1.3+output=2"])  # the last: '+' is not the separator asked for
def test_parse_strength_rejects_what_the_optimizer_would_not_take(text):
    with pytest.raises(ValueError, match="`m`"):
        parse_strength(text)


def test_unknown_layer_name_in_mapping_raises_at_build():
    model = bnn((4,), 2, hidden=(8,))
    opt = MetaplasticAdam(m={"hidden_0": 1.0, "no_such_layer": 1.0, "bn_0": 1.0})
    with pytest.raises(ValueError, match=r"\['bn_0', 'no_such_layer'\]"):
        opt.build(model.trainable_variables)


def test_config_round_trip():
    opt = MetaplasticAdam(0.005, m={"hidden_0": 1.3}, beta_2=0.99, epsilon=1e-8)
    clone = MetaplasticAdam.from_config(opt.get_config())
    assert clone.m == {"hidden_0": 1.3}
    assert clone.get_config() == opt.get_config()
    restored = tf.keras.optimizers.deserialize(tf.keras.optimizers.serialize(opt))
    assert isinstance(restored, MetaplasticAdam) and restored.m == {"hidden_0": 1.3}


def test_gradient_tape_loop_in_tf_function(toy_data):
    x, y = toy_data
    model = bnn((12,), 3, hidden=(16,))
    opt = MetaplasticAdam(LR, m=1.3)
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def step(xb, yb):
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
        opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss

    losses = [float(step(x, y)) for _ in range(30)]
    assert losses[-1] < losses[0]
    assert int(opt.iterations) == 30


def test_jit_compiled_fit_matches_eager_graph(toy_data):
    def make():
        return bnn((12,), 3, hidden=(16,))

    def fit(jit):
        tf.keras.utils.set_random_seed(11)
        model = make()
        model.compile(
            optimizer=MetaplasticAdam(LR, m=1.3),
            loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=jit,
        )
        model.fit(*toy_data, batch_size=32, epochs=2, shuffle=False, verbose=0)
        return model.get_weights()

    for a, b in zip(fit(True), fit(False)):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_checkpoint_round_trip_of_slots_and_resume(tmp_path, toy_data):
    x, y = toy_data
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def make():
        tf.keras.utils.set_random_seed(5)
        model = bnn((12,), 3, hidden=(16,))
        model.compile(optimizer=MetaplasticAdam(LR, m=1.3), loss=loss_fn)
        return model

    # Uninterrupted: 2 epochs.
    straight = make()
    straight.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
    # Interrupted: 1 epoch, checkpoint, restore into a fresh model + optimizer, 1 more.
    first = make()
    first.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    path = tf.train.Checkpoint(model=first, optimizer=first.optimizer).save(str(tmp_path / "ckpt"))
    second = make()
    second.optimizer.build(second.trainable_variables)
    tf.train.Checkpoint(model=second, optimizer=second.optimizer).restore(path).assert_consumed()
    for a, b in zip(first.optimizer.variables(), second.optimizer.variables()):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    second.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(straight.get_weights(), second.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_keras_save_load_resumes_training(tmp_path, toy_data):
    x, y = toy_data
    model = bnn((12,), 3, hidden=(16,))
    model.compile(
        optimizer=MetaplasticAdam(LR, m={"hidden_0": 1.3}),
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    restored = tf.keras.models.load_model(path)
    opt = restored.optimizer
    assert isinstance(opt, MetaplasticAdam) and opt.m == {"hidden_0": 1.3}
    assert int(opt.iterations) == 3  # slots and step counter came back
    before = [v.numpy().copy() for v in restored.trainable_variables]
    restored.fit(x, y, batch_size=32, epochs=1, verbose=0)
    assert int(opt.iterations) == 6
    moved = [np.abs(a - v.numpy()).max() for a, v in zip(before, restored.trainable_variables)]
    assert min(moved) > 0, "every variable keeps training after load_model"
    # Larq layers rebuilt from a config lose their name scope ("hidden_0/kernel" comes
    # back as "kernel"): the strengths must follow the variables, not their names.
    assert opt.metaplastic_strength(restored.get_layer("hidden_0").kernel) == 1.3
    assert opt.metaplastic_strength(restored.get_layer("output").kernel) == 0.0


def test_readable_adam_files_its_moments_and_steps_as_keras_adam():
    w0 = np.array([0.5, -0.25, 1.0], np.float32)
    grads = [np.array([0.2, -0.4, 0.0], np.float32), np.array([-0.1, 0.3, 0.5], np.float32)]
    ours, stock = tf.Variable(w0), tf.Variable(w0)
    readable, keras_adam = Adam(LR), tf.keras.optimizers.Adam(LR)
    for g in grads:
        readable.apply_gradients([(tf.constant(g), ours)])
        keras_adam.apply_gradients([(tf.constant(g), stock)])
    np.testing.assert_array_equal(ours.numpy(), stock.numpy())
    # By hand: m_2 = (1 - b1)(b1 g_1 + g_2), v_2 = (1 - b2)(b2 g_1^2 + g_2^2).
    m, v, v_hat = readable.moments(ours)
    np.testing.assert_allclose(m.numpy(), (1 - B1) * (B1 * grads[0] + grads[1]), rtol=1e-6)
    np.testing.assert_allclose(v.numpy(), (1 - B2) * (B2 * grads[0] ** 2 + grads[1] ** 2), rtol=1e-5)
    assert v_hat is None and readable.built and readable.has_moments(ours)
    other = tf.Variable(w0)
    assert not readable.has_moments(other)
    with pytest.raises(KeyError, match="holds no moments"):
        readable.moments(other)


def test_readable_adam_follows_a_learning_rate_schedule_and_replaces_a_stock_adam():
    schedule = tf.keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.5)
    optimizer = Adam(schedule)
    w = tf.Variable([1.0])
    for _ in range(3):
        optimizer.apply_gradients([(tf.constant([1.0]), w)])
    assert float(optimizer.current_learning_rate()) == pytest.approx(0.1 * 0.5**3)
    stock = tf.keras.optimizers.Adam(0.02, beta_1=0.8)
    readable = as_readable_adam(stock)
    assert type(readable) is Adam and readable.get_config() == {**stock.get_config(), "name": readable.name}
    sgd = tf.keras.optimizers.SGD()
    assert as_readable_adam(sgd) is sgd
    model = engram_bnn((4,), 2, hidden=(8,), max_tasks=2, lda_features=8)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    assert isinstance(model.optimizer, Adam) and supports_block_updates(model.optimizer)
