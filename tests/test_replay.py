"""Replay baselines: the class-balanced reservoir, the buffer, ER and DER++."""
import numpy as np
import pytest
import tensorflow as tf

from larq_engrams import benchmarks as B
from larq_engrams import methods
from larq_engrams.replay import ReplayBuffer, ReplayModel, class_balanced_reservoir
from larq_engrams.training import ContinualTrainer


def _stream(labels, capacity, seed, classes=3, stored=None, seen=None):
    stored = np.full(capacity, -1) if stored is None else stored
    seen = np.zeros(classes, np.int64) if seen is None else seen
    slots = class_balanced_reservoir(np.asarray(labels), stored, seen, capacity, np.random.default_rng(seed))
    return slots, stored, seen


def test_one_class_is_reservoir_sampling():
    # Every one of n = 20 examples ends in a buffer of 5 with probability 5 / 20.
    n, capacity, trials = 20, 5, 4000
    kept = np.zeros(n)
    for seed in range(trials):
        slots, _, _ = _stream(np.zeros(n, int), capacity, seed, classes=1)
        owner = {}
        for i, slot in enumerate(slots):
            if slot >= 0:
                owner[slot] = i
        kept[list(owner.values())] += 1
    sigma = np.sqrt(0.25 * 0.75 / trials)
    np.testing.assert_allclose(kept / trials, 0.25, atol=4 * sigma)


def test_classes_stay_balanced_and_a_new_class_takes_its_share():
    labels = np.array([0] * 90 + [1] * 10)
    _, stored, seen = _stream(np.random.default_rng(0).permutation(labels), 20, 0)
    assert np.bincount(stored, minlength=3).tolist() == [10, 10, 0]  # the rare class keeps all it saw
    assert seen.tolist() == [90, 10, 0]
    _, stored, _ = _stream(np.full(50, 2), 20, 1, stored=stored, seen=seen)
    assert sorted(np.bincount(stored, minlength=3).tolist()) == [6, 7, 7]


def test_buffer_stores_pixels_as_uint8_and_counts_its_bytes():
    buffer = ReplayBuffer(4, (3,), num_classes=2, logits=True)
    x = np.array([[0, 1, 255], [7, 8, 9]], np.float32) / 255.0
    buffer.add(x, [1, 0], logits=np.array([[1.0, 2.0], [3.0, 4.0]], np.float32))
    assert buffer.inputs.dtype == tf.uint8 and int(buffer.size) == 2
    np.testing.assert_array_equal(buffer.inputs.numpy()[:2], [[0, 1, 255], [7, 8, 9]])
    np.testing.assert_array_equal(buffer.decode(buffer.inputs[:2]).numpy(), x)
    assert buffer.bytes() == 4 * 3 * 1 + 4 * 4 + 4 * 2 * 4  # uint8 inputs, int32 labels, float32 logits
    with pytest.raises(ValueError, match="not pixels / 255"):
        buffer.add(np.full((1, 3), 0.5, np.float32), [0], logits=np.zeros((1, 2), np.float32))


def test_draws_come_from_the_buffer_and_weigh_nothing_while_it_is_empty():
    buffer = ReplayBuffer(8, (2,), num_classes=3, seed=5)
    *_, weight = buffer.sample(4)
    assert float(weight) == 0.0
    buffer.add(np.array([[1, 2], [3, 4]], np.float32) / 255.0, [2, 1])
    x, y, logits, weight = buffer.sample(64)
    assert float(weight) == 1.0 and logits is None
    pairs = {(tuple(np.rint(a * 255).astype(int)), int(b)) for a, b in zip(x.numpy(), y.numpy())}
    assert pairs == {((1, 2), 2), ((3, 4), 1)}


def test_derpp_stores_the_networks_logits_when_the_task_ends():
    scenario = B.split_mnist("class", source="bundled", batch_size=64).take(1)
    setup = methods.build("derpp", scenario, hidden=(16,), buffer_size=30)
    model = setup.model
    model.remember(scenario[0].train)
    stored = model.buffer.decode(model.buffer.inputs).numpy()
    np.testing.assert_allclose(model.buffer.logits.numpy(), model.network(stored).numpy(), rtol=1e-5, atol=1e-5)
    assert set(model.buffer.labels.numpy()) == set(scenario[0].labels)


def test_the_buffer_is_in_the_checkpoint(tmp_path):
    network = tf.keras.Sequential([tf.keras.layers.Dense(2, input_shape=(3,))])
    model = ReplayModel(network, buffer_size=5, seed=1)
    model.buffer.add(np.array([[1, 2, 3]], np.float32) / 255.0, [1])
    path = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
    other = ReplayModel(tf.keras.Sequential([tf.keras.layers.Dense(2, input_shape=(3,))]), buffer_size=5, seed=1)
    tf.train.Checkpoint(model=other).read(path).assert_existing_objects_matched()
    for a, b in ((model.buffer.inputs, other.buffer.inputs), (model.buffer.labels, other.buffer.labels),
                 (model.buffer.seen, other.buffer.seen), (model.buffer.draws, other.buffer.draws)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_replay_refuses_task_incremental_scenarios():
    scenario = B.split_mnist("task", source="bundled").take(2)
    setup = methods.build("er", scenario, hidden=(8,))
    with pytest.raises(ValueError, match="class- and domain-incremental"):
        ContinualTrainer(setup.model, setup.optimizer, callbacks=setup.callbacks, verbose=0).fit(setup.scenario)


def test_er_forgets_less_than_finetuning_in_class_il():
    scenario = B.split_mnist("class", source="bundled", seed=0, batch_size=64).take(3)
    results = {}
    for name in ("finetune", "er"):
        setup = methods.build(name, scenario, hidden=(64,), buffer_size=200, seed=0)
        results[name] = ContinualTrainer(setup.model, setup.optimizer, callbacks=setup.callbacks, epochs=1,
                                         seed=0, jit_compile=False, verbose=0).fit(setup.scenario)
    finetune, er = results["finetune"].metrics, results["er"].metrics
    print({k: (finetune[k], er[k]) for k in ("acc", "forgetting")})
    assert er["acc"] > finetune["acc"] + 0.2 and er["forgetting"] < finetune["forgetting"] - 0.2


def _small_scenario():
    return B.split_mnist("class", source="bundled", seed=0, batch_size=64).take(2)


@pytest.mark.parametrize("name, learn, predict", [
    # 784-4-10: 784*4 + 4 + 4*10 + 10 = 3,190 float32 weights = 12,760 bytes.
    ("finetune", 0, 0),
    ("ewc", 3 * 12760, 0),  # Fisher sum, Fisher-weighted anchor and square: 3 copies
    ("online_ewc", 2 * 12760, 0),  # running Fisher, anchor
    ("si", 3 * 12760, 0),  # path integral, importance, anchor
    ("lwf", 12760 + 10 * 4, 0),  # the teacher's weights, the old classes' mask
    ("er", 50 * 784 + 50 * 4, 0),  # uint8 images, int32 labels
    ("derpp", 50 * 784 + 50 * 4 + 50 * 10 * 4, 0),  # + float32 logits
    # the router's statistics: counts, sums, packed scatter of 16 features; to predict: kernel, bias, R's bits
    # (dense: 784 rows of one int32 word; conv: 16 filters of 5 x 5, 25 rows of one word)
    ("slda_rf", 4 * (10 + 10 * 16 + 17 * 8), 4 * (10 * 16 + 10) + 784 * 4),
    ("engram_bnn", 4 * (2 * 10 + 2 * 10 * 16 + 17 * 8), 4 * (2 * 10 * 16 + 2 * 10) + 784 * 4),
    ("slda_rf/conv", 4 * (10 + 10 * 16 + 17 * 8), 4 * (10 * 16 + 10) + 25 * 4),
    ("engram_bnn/conv", 4 * (2 * 10 + 2 * 10 * 16 + 17 * 8), 4 * (2 * 10 * 16 + 2 * 10) + 25 * 4),
])
def test_every_result_records_the_bytes_a_method_keeps_counted_by_hand(name, learn, predict):
    scenario = _small_scenario()
    name, features = (name.split("/") + ["dense"])[:2]
    setup = methods.build(name, scenario, hidden=(4,), buffer_size=50, lda_features=16, fisher_samples=10,
                          router_features=features)
    if name == "slda_rf":
        assert setup.model.discriminant.num_features == 16
    result = ContinualTrainer(setup.model, setup.optimizer, callbacks=setup.callbacks, epochs=1, seed=0,
                              jit_compile=False, verbose=0).fit(setup.scenario)
    assert result.memory["state_bytes"] == {"learn": learn, "predict": predict}


def test_replay_methods_take_a_buffer_size_in_their_name():
    scenario = B.split_mnist("class", source="bundled")
    assert methods.build("er@1000", scenario, hidden=(8,)).model.buffer.capacity == 1000
    # engram_bnn's router statistics on Split MNIST, convolutional features (56 filters x 36 positions =
    # 2016): float32 counts (5 x 10), sums (5 x 10 x 2016) and the packed scatter (2017 x 1008): 8,535,944
    # bytes; an MNIST example in the buffer: 784 + 4 bytes (+ 40 for DER++'s logits).
    assert methods.build("er@equal", scenario, hidden=(8,)).model.buffer.capacity == 8_535_944 // 788
    assert methods.build("derpp@equal", scenario, hidden=(8,)).model.buffer.capacity == 8_535_944 // 828
    setup = methods.build("er_bnn@200", scenario, hidden=(8,))
    assert setup.name == "er_bnn@200" and setup.description.endswith("buffer 200")
    for bad in ("bnn@200", "er@0", "er@lots"):
        assert not methods.known(bad)
        with pytest.raises(ValueError, match="only replay methods"):
            methods.build(bad, scenario)


def test_a_saved_replay_model_loads_with_its_buffer_and_predicts_the_same(tmp_path):
    scenario = B.split_mnist("class", source="bundled").take(1)
    model = methods.build("derpp", scenario, hidden=(16,), buffer_size=20).model
    model.remember(scenario[0].train)
    x = np.random.default_rng(0).random((5, 784)).astype(np.float32)
    model.save(tmp_path / "model.keras")
    loaded = tf.keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    for name in ("inputs", "labels", "logits", "seen", "insertions"):
        np.testing.assert_array_equal(getattr(loaded.buffer, name).numpy(), getattr(model.buffer, name).numpy())
    assert loaded.get_config()["method"] == "derpp" and loaded.buffer.capacity == 20
