"""EngramDense: gating, gradients, allocation statistics, state and serialization."""
import numpy as np
import pytest
import tensorflow as tf

from larq_engrams import EngramDense


def built_layer(units=64, features=10, **kwargs):
    kwargs.setdefault("max_tasks", 4)
    layer = EngramDense(units, **kwargs)
    layer.build((None, features))
    return layer


def inputs(batch=32, features=10, seed=0):
    return tf.constant(np.random.default_rng(seed).normal(size=(batch, features)), tf.float32)


# ----------------------------------------------------------------- allocation
def test_default_engram_fraction_is_an_even_share_capped_at_a_fifth():
    from larq_engrams.layers import engram_fraction_for
    assert [engram_fraction_for(t) for t in (1, 2, 5, 6, 10, 100)] == [0.2, 0.2, 0.2, 1 / 6, 0.1, 0.01]
    assert built_layer(100, max_tasks=20).engram_fraction == 0.05  # None: by the bank's size
    assert EngramDense.from_config(built_layer(100, max_tasks=20).get_config()).engram_fraction == 0.05
    with pytest.raises(ValueError, match="max_tasks"):
        engram_fraction_for(0)


def expected_probabilities(usage, rho, beta):
    """docs/method.md, section 3 by hand: p_i = min(1, rho N e_i / sum e), e_i = exp(-beta u_i)."""
    e = np.exp(-beta * np.asarray(usage, np.float64))
    return np.minimum(1.0, rho * len(usage) * e / e.sum())


def test_first_engram_size_and_uniformity_over_many_draws():
    n, rho, draws = 200, 0.3, 400
    counts = np.zeros(n)
    sizes = []
    for seed in range(draws):
        mask = built_layer(n, max_tasks=1, engram_fraction=rho, seed=seed).allocate(0)
        counts += mask
        sizes.append(mask.sum())
    # Size ~ Binomial(N, rho): mean 60, s.e. of the mean sqrt(60*0.7/400) = 0.32.
    assert abs(np.mean(sizes) - rho * n) < 1.5
    # Each unit is picked with probability rho (no usage yet): s.e. 0.023 per unit.
    assert np.abs(counts / draws - rho).max() < 0.1


@pytest.mark.parametrize("beta", [0.0, 1.0, 4.0])
def test_second_engram_follows_excitability_rule(beta):
    # Count how often units already in E_0 (and units not in it) enter E_1, against the
    # sum of the rule's p_i: a binomial sum, so |observed - expected| < 4 s.d.
    n, rho, draws = 100, 0.25, 300
    observed, expected, variance, members_seen = (np.zeros(2) for _ in range(4))
    for seed in range(draws):
        layer = built_layer(n, engram_fraction=rho, excitability=beta, seed=seed)
        first = layer.allocate(0)
        second = layer.allocate(1)
        p = expected_probabilities(first.astype(int), rho, beta)
        for group, members in enumerate((first, ~first)):
            observed[group] += second[members].sum()
            expected[group] += p[members].sum()
            variance[group] += (p * (1 - p))[members].sum()
            members_seen[group] += members.sum()
    assert np.all(np.abs(observed - expected) < 4 * np.sqrt(variance) + 1e-9), (observed, expected)
    used_rate, unused_rate = observed / members_seen
    if beta >= 4.0:  # a used unit is e^-4 = 0.018 times as likely to be picked
        assert used_rate < 0.05 * unused_rate


def test_excitability_makes_engrams_nearly_disjoint():
    def mean_overlap(beta):
        overlaps = []
        for seed in range(50):
            layer = built_layer(400, engram_fraction=0.2, excitability=beta, seed=seed)
            layer.allocate(0)
            layer.allocate(1)
            overlaps.append(layer.overlap(0, 1))
        return np.mean(overlaps)

    # beta = 0: independent draws, overlap ~ rho^2 = 0.04.
    assert abs(mean_overlap(0.0) - 0.04) < 0.01
    # beta = 6: used units have e = exp(-6); expected overlap
    #   80 * min(1, 80 e^-6 / (320 + 80 e^-6)) / 400 = 0.000124.
    assert mean_overlap(6.0) < 0.002


def test_usage_counts_and_same_seed_same_masks():
    a = built_layer(50, seed=3, engram_fraction=0.5)
    b = built_layer(50, seed=3, engram_fraction=0.5)
    c = built_layer(50, seed=4, engram_fraction=0.5)
    for t in range(3):
        np.testing.assert_array_equal(a.allocate(t), b.allocate(t))
        c.allocate(t)
    assert not np.array_equal(a.engram_mask(0), c.engram_mask(0))
    expected_usage = sum(a.engram_mask(t).astype(int) for t in range(3))
    np.testing.assert_array_equal(a.usage, expected_usage)
    assert a.allocated_tasks == [0, 1, 2]
    assert a.engram_mask(1).dtype == bool


def test_allocation_errors():
    layer = built_layer(max_tasks=2)
    layer.allocate(0)
    with pytest.raises(ValueError, match="already has an engram"):
        layer.allocate(0)
    with pytest.raises(ValueError, match="outside"):
        layer.allocate(2)
    with pytest.raises(ValueError, match="no engram yet"):
        layer.engram_mask(1)
    with pytest.raises(ValueError, match="no engram yet"):
        layer.set_active_task(1)
    with pytest.raises(ValueError, match="int"):
        layer.allocate(0.5)
    with pytest.raises(RuntimeError, match="not built"):
        EngramDense(4, max_tasks=1).allocate(0)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(units=0, max_tasks=1), "units"),
        (dict(units=4, max_tasks=0), "max_tasks"),
        (dict(units=4, max_tasks=1, engram_fraction=0.0), "engram_fraction"),
        (dict(units=4, max_tasks=1, activation_probability=1.5), "activation_probability"),
        (dict(units=4, max_tasks=1, excitability=-1), "excitability"),
    ],
)
def test_bad_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        EngramDense(**kwargs)


# -------------------------------------------------------------- gating maths
def two_layers(q=1.0):
    first = built_layer(32, features=10, engram_fraction=0.4, activation_probability=q, seed=1)
    second = EngramDense(16, max_tasks=4, engram_fraction=0.5, seed=2)
    second.build((None, 32))
    for layer in (first, second):
        layer.allocate(0)
        layer.set_active_task(0)
    return first, second


@pytest.mark.parametrize("training", [True, False])
def test_silent_units_output_exact_zeros_and_contribute_nothing(training):
    first, second = two_layers()
    x = inputs()
    h = first(x, training=training).numpy()
    silent = ~first.engram_mask(0)
    assert silent.any() and (~silent).any()
    assert np.all(h[:, silent] == 0.0)
    assert set(np.unique(h[:, ~silent])) <= {-1.0, 1.0}
    # Next layer: its pre-activation z = h @ sign(W). Scrambling the kernel rows that
    # silent units feed must not change z at all (exact zeros, no sign(0) = +1).
    z = second.dense(h).numpy()
    kernel = second.dense.kernel
    latent = tf.convert_to_tensor(kernel).numpy()
    scrambled = latent.copy()
    scrambled[silent] = -scrambled[silent] + 0.3
    kernel.assign(scrambled)
    np.testing.assert_array_equal(second.dense(h).numpy(), z)
    kernel.assign(latent)


def test_no_gradient_reaches_silent_units():
    first, second = two_layers()
    x = inputs()
    with tf.GradientTape() as tape:
        out = second(first(x, training=True), training=True)
        loss = tf.reduce_sum(tf.square(out - 0.3))
    variables = [first.dense.kernel, first.gamma, first.beta]
    kernel_grad, gamma_grad, beta_grad = [g.numpy() for g in tape.gradient(loss, variables)]
    silent = ~first.engram_mask(0)
    assert np.all(kernel_grad[:, silent] == 0.0)
    assert np.all(gamma_grad[silent] == 0.0) and np.all(beta_grad[silent] == 0.0)
    assert np.abs(kernel_grad[:, ~silent]).sum() > 0


def test_moving_statistics_of_silent_units_are_untouched():
    layer = built_layer(32, engram_fraction=0.5, seed=5)
    layer.allocate(0)
    layer.set_active_task(0)
    x = inputs() * 3.0 + 1.0
    layer(x, training=True)
    active = layer.engram_mask(0)
    mean, var = layer.moving_mean.numpy(), layer.moving_variance.numpy()
    assert np.all(mean[~active] == 0.0) and np.all(var[~active] == 1.0)
    # Active units moved by (1 - momentum) toward the batch statistics.
    z = layer.dense(x).numpy()
    np.testing.assert_allclose(mean[active], 0.1 * z.mean(axis=0)[active], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        var[active], 0.9 + 0.1 * z.var(axis=0)[active], rtol=1e-4, atol=1e-6
    )


def test_inference_uses_moving_statistics_and_is_deterministic():
    layer = built_layer(32, activation_probability=0.5)
    layer.allocate(0)
    layer.set_active_task(0)
    x = inputs()
    a, b = layer(x, training=False).numpy(), layer(x, training=False).numpy()
    np.testing.assert_array_equal(a, b)
    # No reactivation sampling at inference: every engram unit is on.
    np.testing.assert_array_equal(a != 0, np.broadcast_to(layer.engram_mask(0), a.shape))


def test_stochastic_reactivation_rate_and_rescaling():
    q = 0.6
    layer = built_layer(200, engram_fraction=0.5, activation_probability=q, seed=9)
    layer.allocate(0)
    layer.set_active_task(0)
    active = layer.engram_mask(0)
    x = inputs(batch=256)
    out1 = layer(x, training=True).numpy()
    out2 = layer(x, training=True).numpy()
    rate = (out1[:, active] != 0).mean()
    assert abs(rate - q) < 0.02  # 256 * 100 Bernoulli draws: s.e. 0.003
    assert np.all(out1[:, ~active] == 0)
    assert not np.array_equal(out1 != 0, out2 != 0), "fresh draws every step"
    # The logged activation rate: non-zero fraction over all units.
    np.testing.assert_allclose(float(layer.activation_rate), (out2 != 0).mean(), rtol=1e-6)
    scaled = built_layer(200, engram_fraction=0.5, activation_probability=q, seed=9,
                         rescale_reactivation=True)
    scaled.allocate(0)
    scaled.set_active_task(0)
    values = np.unique(np.abs(scaled(x, training=True).numpy()))
    np.testing.assert_allclose(values, [0.0, 1.0 / q], rtol=1e-6)


def test_reactivation_draws_are_reproducible_from_seed_and_step():
    def draws():
        layer = built_layer(40, activation_probability=0.5, seed=21)
        layer.allocate(0)
        layer.set_active_task(0)
        x = inputs()
        return [layer(x, training=True).numpy() != 0 for _ in range(3)]

    for a, b in zip(draws(), draws()):
        np.testing.assert_array_equal(a, b)


def test_per_sample_task_ids_and_union_mode():
    layer = built_layer(48, engram_fraction=0.3, excitability=5.0, seed=2)
    for t in range(3):
        layer.allocate(t)
    x = inputs(batch=6)
    ids = tf.constant([0, 1, 2, 2, 1, 0])
    out = layer(x, training=False, task=ids).numpy()
    for row, t in enumerate(ids.numpy()):
        np.testing.assert_array_equal(out[row] != 0, layer.engram_mask(int(t)))
    union = layer(x, training=False, mode="union").numpy()
    expected = layer.engram_mask(0) | layer.engram_mask(1) | layer.engram_mask(2)
    np.testing.assert_array_equal(union != 0, np.broadcast_to(expected, union.shape))
    with pytest.raises(ValueError, match="mode"):
        layer(x, mode="everything")


# ------------------------------------------------------------- serialization
def test_config_round_trip():
    layer = EngramDense(12, max_tasks=3, engram_fraction=0.4, activation_probability=0.7,
                        excitability=2.0, seed=5, input_quantizer="ste_sign", name="e")
    clone = EngramDense.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    restored = tf.keras.layers.deserialize(tf.keras.layers.serialize(layer))
    assert isinstance(restored, EngramDense) and restored.excitability == 2.0


@pytest.mark.parametrize("fmt", ["keras", "tf"])
def test_state_survives_save_and_load_bit_for_bit(tmp_path, fmt):
    model = tf.keras.Sequential(
        [tf.keras.Input((10,)), EngramDense(24, max_tasks=3, activation_probability=0.8, seed=7,
                                            name="engram")]
    )
    layer = model.get_layer("engram")
    layer.allocate(0)
    layer.allocate(2)
    layer.set_active_task(2)
    layer(inputs(), training=True)  # moves BN statistics and the reactivation step
    path = str(tmp_path / ("m.keras" if fmt == "keras" else "saved"))
    model.save(path, save_format=None if fmt == "keras" else "tf")
    restored = tf.keras.models.load_model(path).get_layer("engram")
    assert isinstance(restored, EngramDense)
    for name in ("engram_masks", "allocated", "active_task", "reactivation_step",
                 "moving_mean", "moving_variance", "gamma", "beta"):
        np.testing.assert_array_equal(getattr(restored, name).numpy(), getattr(layer, name).numpy())
    np.testing.assert_array_equal(restored.usage, layer.usage)
    assert restored.allocated_tasks == [0, 2]
    x = inputs(seed=3)
    np.testing.assert_array_equal(restored(x, training=False).numpy(), layer(x, training=False).numpy())
    # The reactivation sequence continues where it was.
    np.testing.assert_array_equal(restored(x, training=True).numpy(), layer(x, training=True).numpy())


def test_the_overlap_matrix_is_every_pairs_overlap():
    layer = built_layer(200, engram_fraction=0.3, excitability=0.0, seed=4)
    for t in (0, 2, 3):
        layer.allocate(t)
    matrix = layer.overlap_matrix()
    expected = [[layer.overlap(s, t) for t in (0, 2, 3)] for s in (0, 2, 3)]
    np.testing.assert_allclose(matrix, expected)
    np.testing.assert_allclose(np.diag(matrix), [layer.engram_mask(t).mean() for t in (0, 2, 3)])
    np.testing.assert_allclose(layer.overlap_matrix([3, 0]), [[expected[2][2], expected[2][0]],
                                                              [expected[0][2], expected[0][0]]])
