"""Model builders, EngramModel's task control and inference modes, and forgetting."""
import json
import subprocess
import sys

import larq as lq
import numpy as np
import pytest
import tensorflow as tf

from larq_engrams import EngramDense, EngramModel, MetaplasticAdam, bnn, engram_bnn, mlp
from larq_engrams.optimizers import Adam

LOSS = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def permuted_feature_tasks(seed=0, n=2000, d=32, k=4):
    """Two domain-incremental tasks: Gaussian class clusters, then the same with the
    features permuted (a miniature permuted MNIST)."""
    rng = np.random.default_rng(seed)
    prototypes = rng.normal(size=(k, d))
    y = rng.integers(0, k, n).astype(np.int32)
    x = (prototypes[y] + 0.8 * rng.normal(size=(n, d))).astype(np.float32)
    tasks = []
    for perm in (np.arange(d), rng.permutation(d)):
        xp = x[:, perm]
        tasks.append(((xp[:1500], y[:1500]), (xp[1500:], y[1500:])))
    return tasks


def test_keras_2_is_bound():
    assert tf.keras.Model.__module__.startswith("tf_keras")


def test_import_is_quiet_by_default_and_can_be_loud():
    env = {k: v for k, v in __import__("os").environ.items()
           if k not in ("LARQ_ENGRAMS_QUIET_STARTUP", "TF_CPP_MIN_LOG_LEVEL")}
    code = "import larq_engrams, tensorflow as tf; tf.constant(1.0) + 1.0"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    loud = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**env, "LARQ_ENGRAMS_QUIET_STARTUP": "0"})
    assert loud.returncode == 0
    if not tf.config.list_physical_devices("GPU"):  # CPU machines: the CUDA probe speaks
        assert loud.stderr != ""


def test_import_refuses_tf_keras_already_bound_to_keras_3():
    code = "import tensorflow as tf; tf.keras.layers; import larq_engrams"
    env = {k: v for k, v in __import__("os").environ.items() if k != "TF_USE_LEGACY_KERAS"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**env, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode != 0 and "needs Keras 2" in proc.stderr.splitlines()[-1]


def test_import_accepts_tf_keras_already_touched_with_the_variable_set():
    code = "import tensorflow as tf; tf.keras.layers; import larq_engrams; print('ok')"
    env = {**__import__("os").environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("ok")


def test_import_fails_clearly_when_tf_keras_is_already_keras_3():
    code = (
        "import os; os.environ.pop('TF_USE_LEGACY_KERAS', None)\n"
        "import tensorflow as tf; tf.keras.layers\n"
        "import larq_engrams\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode != 0
    assert "ImportError" in proc.stderr and "TF_USE_LEGACY_KERAS=1" in proc.stderr


def test_bnn_backbone_matches_method():
    model = bnn((28, 28), 10, hidden=(64, 32))
    quant = [layer for layer in model.layers if isinstance(layer, lq.layers.QuantDense)]
    assert [layer.units for layer in quant] == [64, 32, 10]
    assert quant[0].input_quantizer is None  # real-valued pixels in
    assert all(layer.input_quantizer.__class__.__name__ == "SteSign" for layer in quant[1:])
    for layer in quant:
        assert layer.kernel_quantizer.clip_value is None and not layer.use_bias
        assert layer.kernel_constraint is None
    assert model.output_shape == (None, 10)
    norms = [layer for layer in model.layers if isinstance(layer, tf.keras.layers.BatchNormalization)]
    assert len(norms) == 3 and all(n.epsilon == 1e-5 for n in norms)


def test_mlp_is_full_precision_relu():
    model = mlp((8,), 3, hidden=(16, 16))
    dense = [layer for layer in model.layers if isinstance(layer, tf.keras.layers.Dense)]
    assert [d.units for d in dense] == [16, 16, 3]
    assert [d.activation.__name__ for d in dense] == ["relu", "relu", "linear"]


def test_engram_model_needs_begin_task_before_fit():
    model = engram_bnn((8,), 2, hidden=(8,), max_tasks=2)
    model.compile(optimizer="adam", loss=LOSS)
    with pytest.raises(RuntimeError, match="begin_task"):
        model.fit(np.zeros((4, 8), np.float32), np.zeros(4, np.int32), verbose=0)


def test_engram_model_argument_errors():
    with pytest.raises(ValueError, match="hidden"):
        engram_bnn((8,), 2, hidden=())
    with pytest.raises(ValueError, match="num_classes"):
        engram_bnn((8,), 0)
    model = engram_bnn((8,), 2, hidden=(8,), max_tasks=2)
    with pytest.raises(ValueError, match="mode"):
        model.set_inference("oracle")
    with pytest.raises(ValueError, match="no engram yet"):
        model.set_inference("task", task=1)
    with pytest.raises(ValueError, match="outside"):
        model.begin_task(-1)


def _trained_engram_model(tasks, epochs=3, optimizer=None, **kwargs):
    kwargs = {"engram_fraction": 0.4, "excitability": 4.0, **kwargs}
    model = engram_bnn((32,), 4, hidden=(128, 128), max_tasks=3, lda_features=64, **kwargs)
    for t, ((x, y), _) in enumerate(tasks):
        model.begin_task(t)
        model.compile(
            optimizer=optimizer() if optimizer else tf.keras.optimizers.Adam(0.005),
            loss=LOSS,
            metrics=["accuracy"],
        )
        model.fit(x, y, epochs=epochs, batch_size=50, verbose=0)
    return model


def test_two_task_engram_model_forgets_less_than_plain_bnn():
    tasks = permuted_feature_tasks()
    (x0, y0), test0 = tasks[0]

    plain = bnn((32,), 4, hidden=(128, 128))
    plain.compile(optimizer=tf.keras.optimizers.Adam(0.005), loss=LOSS, metrics=["accuracy"])
    plain.fit(x0, y0, epochs=3, batch_size=50, verbose=0)
    plain_before = plain.evaluate(*test0, verbose=0)[1]
    plain.fit(*tasks[1][0], epochs=3, batch_size=50, verbose=0)
    plain_forgetting = plain_before - plain.evaluate(*test0, verbose=0)[1]

    for optimizer in (None, lambda: MetaplasticAdam(0.005, m=1.3)):
        model = _trained_engram_model(tasks[:1], optimizer=optimizer)
        engram_before = model.evaluate(*test0, verbose=0)[1]
        model.begin_task(1)
        model.fit(*tasks[1][0], epochs=3, batch_size=50, verbose=0)
        model.set_inference("task", task=0)
        engram_forgetting = engram_before - model.evaluate(*test0, verbose=0)[1]
        print(f"toy two-task forgetting of task 0: bnn+Adam {plain_before:.3f} -> "
              f"{plain_before - plain_forgetting:.3f}; engram_bnn with "
              f"{'MetaplasticAdam' if optimizer else 'Adam'} {engram_before:.3f} -> "
              f"{engram_before - engram_forgetting:.3f}")
        assert plain_before > 0.9 and engram_before > 0.9, "both learn task 0"
        assert plain_forgetting > 0.2, f"the plain BNN forgets ({plain_forgetting:.3f})"
        assert engram_forgetting < plain_forgetting - 0.15, (engram_forgetting, plain_forgetting)


def test_keras_user_flow_and_inference_modes():
    tasks = permuted_feature_tasks(seed=1)
    model = _trained_engram_model(tasks)
    assert model.allocated_tasks == [0, 1] and model.active_task == 1
    (x0, y0), (x1, _) = tasks[0][1], tasks[1][1]
    x = np.concatenate([x0, x1])

    # task mode follows the active task by default; a fixed task on request.
    model.set_inference("task")
    np.testing.assert_array_equal(model.predict(x0, verbose=0), model((x0, np.ones(len(x0), np.int32))).numpy())
    model.set_inference("task", task=0)
    acc0 = model.evaluate(x0, y0, verbose=0)[1]
    assert acc0 > 0.9

    # union mode: every layer gated by the union of the engrams.
    model.set_inference("union")
    union_logits = model.predict(x0, verbose=0)
    h = model.flatten(x0)
    for layer in model.engram_layers:
        h = layer(h, training=False, mode="union")
    np.testing.assert_allclose(union_logits, model.classifier_norm(model.classifier(h)).numpy(), atol=1e-5)

    # infer mode, max-softmax confidence, no class restriction: per sample, the logits of
    # the engram with the highest max softmax.
    model.restrict_to_engram_classes = False
    model.set_inference("infer", confidence="max_softmax")
    chosen = model.predict(x, verbose=0)
    per_task = np.stack([model((x, np.full(len(x), t, np.int32))).numpy() for t in (0, 1)])
    best = tf.nn.softmax(per_task).numpy().max(axis=-1).argmax(axis=0)
    np.testing.assert_allclose(chosen, per_task[best, np.arange(len(x))], atol=1e-5)
    np.testing.assert_array_equal(model.infer_tasks(x).numpy(), best)

    # infer mode, excitation: the engram with the largest summed BatchNorm deviation.
    model.set_inference("infer", confidence="excitation")
    excitation = np.zeros((2, len(x)))
    for t in (0, 1):
        h = model.flatten(x)
        ids = np.full(len(x), t, np.int32)
        for layer in model.engram_layers:
            h, deviation = layer.call_with_deviation(h, ids)
            excitation[t] += deviation.numpy()
    best = excitation.argmax(axis=0)
    np.testing.assert_array_equal(model.infer_tasks(x).numpy(), best)
    np.testing.assert_allclose(model.predict(x, verbose=0), per_task[best, np.arange(len(x))], atol=1e-4)
    truth = np.repeat([0, 1], [len(x0), len(x1)])
    assert (best == truth).mean() > 0.6  # well-separated domains: the task is inferred


def test_engram_classes_are_recorded_and_restrict_infer_predictions():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8)).astype(np.float32)
    model = engram_bnn((8,), 6, hidden=(16,), max_tasks=2, engram_fraction=0.5)
    for t, classes in enumerate(((0, 1), (2, 3))):
        y = rng.choice(classes, 200).astype(np.int32)
        model.begin_task(t)
        model.compile(optimizer="adam", loss=LOSS)
        model.fit(x, y, batch_size=50, epochs=1, verbose=0)
    np.testing.assert_array_equal(model.engram_classes.numpy(), [[1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0]])
    model.set_inference("infer")
    predictions = model.predict(x, verbose=0).argmax(axis=-1)
    chosen = model.infer_tasks(x).numpy()
    assert np.all(np.isin(predictions[chosen == 0], [0, 1])) and np.all(np.isin(predictions[chosen == 1], [2, 3]))


def test_deviation_formula():
    layer = EngramDense(6, max_tasks=1, engram_fraction=0.5, seed=1)
    layer.build((None, 4))
    layer.allocate(0)
    layer.moving_mean.assign([0.5, -1.0, 0.0, 2.0, 1.0, 0.0])
    layer.moving_variance.assign([1.0, 4.0, 0.25, 1.0, 2.0, 9.0])
    x = tf.constant(np.random.default_rng(2).normal(size=(3, 4)), tf.float32)
    _, deviation = layer.call_with_deviation(x, 0)
    z = layer.dense(x).numpy()
    mask = layer.engram_mask(0)
    standardized = (z - layer.moving_mean.numpy()) ** 2 / (layer.moving_variance.numpy() + 1e-5)
    np.testing.assert_allclose(deviation.numpy(), standardized[:, mask].mean(axis=1), rtol=1e-5)


_PREDICT_IN_FRESH_PROCESS = """
import json, sys, numpy as np, larq_engrams, tensorflow as tf
x = np.load(sys.argv[1])
for path in sys.argv[2:]:
    model = tf.keras.models.load_model(path)
    np.save(path + ".npy", model.predict(x, verbose=0))
    print(json.dumps([path, model.inference_mode, model.get_config()["inference_task"]]))
"""


def test_engram_model_save_load_round_trip(tmp_path):
    tasks = permuted_feature_tasks(seed=2)
    model = _trained_engram_model(tasks, epochs=1, optimizer=lambda: MetaplasticAdam(0.005, m=1.3))
    x = np.concatenate([tasks[0][1][0], tasks[1][1][0]])
    np.save(tmp_path / "x.npy", x)
    # Each inference mode is saved with the model: a fresh process that loads it
    # predicts exactly what the saved model did, without being told the mode.
    expected = {}
    for mode, task in (("task", None), ("task", 0), ("union", None), ("infer", None)):
        model.set_inference(mode, task=task)
        path = str(tmp_path / f"{mode}{task}.keras")
        model.save(path)
        expected[path] = (mode, task, model.predict(x, verbose=0))
        saved = str(tmp_path / f"{mode}{task}_saved")
        model.save(saved, save_format="tf")  # the SavedModel format round-trips in this process
        restored = tf.keras.models.load_model(saved)
        assert isinstance(restored, EngramModel) and restored.allocated_tasks == [0, 1]
        assert restored.inference_mode == mode
        np.testing.assert_array_equal(restored.predict(x, verbose=0), expected[path][2])
    env = {**__import__("os").environ, "LARQ_ENGRAMS_QUIET_STARTUP": "1"}
    proc = subprocess.run([sys.executable, "-c", _PREDICT_IN_FRESH_PROCESS, str(tmp_path / "x.npy"), *expected],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for line in proc.stdout.splitlines():
        path, mode, task = __import__("json").loads(line)
        assert (mode, task) == expected[path][:2]
        np.testing.assert_array_equal(np.load(path + ".npy"), expected[path][2])
    assert len(proc.stdout.splitlines()) == 4
    restored = tf.keras.models.load_model(str(tmp_path / "taskNone.keras"))
    assert restored.allocated_tasks == [0, 1] and restored.active_task == 1
    for t in (0, 1):
        for name, mask in model.engram_masks(t).items():
            np.testing.assert_array_equal(restored.engram_masks(t)[name], mask)
    assert EngramModel.from_config(model.get_config()).get_config() == model.get_config()


def test_infer_before_any_engram_fails_eagerly_in_one_line():
    model = engram_bnn((8,), 4, hidden=(16,), max_tasks=2)
    x = np.zeros((3, 8), np.float32)
    with pytest.raises(ValueError, match=r"has none; call `model.begin_task\(0\)` and train") as error:
        model.set_inference("infer")
    assert "\n" not in str(error.value) and model.inference_mode == "task"
    # Built in "infer" mode (as a loaded config may be): predict and call fail the same way, before tracing
    loaded = EngramModel.from_config({**model.get_config(), "inference_mode": "infer"})
    for call in (lambda: loaded.predict(x, verbose=0), lambda: loaded(x)):
        with pytest.raises(ValueError, match="has none; call `model.begin_task") as error:
            call()
        assert "\n" not in str(error.value)


def _train_tasks(model, tasks, x, y):
    model.compile(optimizer=Adam(0.01), loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    for t in tasks:
        model.begin_task(t)
        model.fit(x[t], y[t], epochs=1, batch_size=25, verbose=0)


def test_a_model_grown_past_max_tasks_learns_as_one_built_with_room():
    rng = np.random.default_rng(0)
    x = rng.random((4, 50, 8)).astype(np.float32)
    y = rng.integers(0, 4, (4, 50))
    tf.keras.utils.set_random_seed(1)
    roomy = engram_bnn((8,), 4, hidden=(16, 16), max_tasks=4)
    _train_tasks(roomy, range(4), x, y)
    tf.keras.utils.set_random_seed(1)
    grown = engram_bnn((8,), 4, hidden=(16, 16), max_tasks=2)
    _train_tasks(grown, range(4), x, y)  # begin_task(2) and (3) grow it
    assert grown.max_tasks == 4 and grown.get_config()["max_tasks"] == 4
    assert grown.allocated_tasks == roomy.allocated_tasks == [0, 1, 2, 3]
    for a, b in zip(roomy.get_weights(), grown.get_weights()):
        np.testing.assert_array_equal(a, b)
    for model in (roomy, grown):
        model.set_inference("infer")
    np.testing.assert_array_equal(roomy.predict(x[0], verbose=0), grown.predict(x[0], verbose=0))


def test_growing_keeps_what_the_engrams_and_the_router_compute(tmp_path):
    rng = np.random.default_rng(1)
    x, y = rng.random((2, 40, 8)).astype(np.float32), rng.integers(0, 4, (2, 40))
    model = engram_bnn((8,), 4, hidden=(16,), max_tasks=2)
    _train_tasks(model, range(2), x, y)
    before = [model((x[0], np.full(40, t)), training=False).numpy() for t in (0, 1)]
    scores = model.task_discriminant.group_scores(x[0]).numpy()
    model.grow_engrams(5)
    assert model.max_tasks == 5 and model.allocated_tasks == [0, 1]
    for t in (0, 1):
        np.testing.assert_array_equal(model((x[0], np.full(40, t)), training=False).numpy(), before[t])
    grown = model.task_discriminant.group_scores(x[0]).numpy()
    np.testing.assert_array_equal(grown[:, :2], scores)
    assert (grown[:, 2:] <= -1e8).all()  # new groups are empty
    # a checkpoint of the grown model restores into one built with fewer rows
    path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
    fresh = engram_bnn((8,), 4, hidden=(16,), max_tasks=2)
    tf.train.Checkpoint(model=fresh).restore(path).expect_partial()
    assert fresh.max_tasks == 5 and fresh.allocated_tasks == [0, 1]
    np.testing.assert_array_equal(fresh((x[0], np.full(40, 1)), training=False).numpy(), before[1])


def test_an_engram_layer_beyond_its_bank_says_how_to_grow_it():
    layer = EngramDense(4, max_tasks=2)
    layer.build((None, 3))
    with pytest.raises(ValueError, match=r"outside \[0, max_tasks=2\); grow the bank first \(`layer.grow\(4\)`"):
        layer.allocate(3)
    layer.grow(4)
    assert layer.max_tasks == 4 and layer.allocate(3).shape == (4,)


_EVALUATE_IN_FRESH_PROCESS = """
import json, sys, numpy as np, larq_engrams, tensorflow as tf
x, y = np.load(sys.argv[1]), np.load(sys.argv[2])
model = tf.keras.models.load_model(sys.argv[3])  # no compile by the user
loss, accuracy = model.evaluate(x, y, verbose=0)
optimizer = model.optimizer
print(json.dumps([loss, accuracy, type(optimizer).__name__, optimizer.get_config()["m"],
                  int(optimizer.iterations.numpy())]))
model.begin_task(2)  # and it goes on training, the next task
model.fit(x, y, batch_size=50, epochs=1, verbose=0)
print(model.allocated_tasks)
"""


def test_a_loaded_model_evaluates_and_trains_without_compile(tmp_path):
    tasks = permuted_feature_tasks(seed=3)
    model = _trained_engram_model(tasks, epochs=1, optimizer=lambda: MetaplasticAdam(0.005, m=1.3))
    model.set_inference("infer")
    x = np.concatenate([tasks[0][1][0], tasks[1][1][0]])
    y = np.concatenate([tasks[0][1][1], tasks[1][1][1]])
    np.save(tmp_path / "x.npy", x), np.save(tmp_path / "y.npy", y)
    saved_loss, saved_accuracy = model.evaluate(x, y, verbose=0)
    model.save(tmp_path / "m.keras")
    env = {**__import__("os").environ, "LARQ_ENGRAMS_QUIET_STARTUP": "1"}
    proc = subprocess.run([sys.executable, "-c", _EVALUATE_IN_FRESH_PROCESS, *(str(tmp_path / f) for f in
                           ("x.npy", "y.npy", "m.keras"))], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "compile()` was not called" not in proc.stderr
    evaluated, trained = proc.stdout.splitlines()
    loss, accuracy, optimizer, m, iterations = json.loads(evaluated)
    assert loss == pytest.approx(saved_loss, rel=1e-6) and accuracy == pytest.approx(saved_accuracy)
    assert (optimizer, m, iterations) == ("MetaplasticAdam", 1.3, int(model.optimizer.iterations.numpy()))
    assert trained == "[0, 1, 2]"


def test_infer_outputs_are_log_probabilities_with_the_engrams_argmax():
    rng = np.random.default_rng(0)
    # A weight other than the default 1, so that a dropped or misplaced weight shows.
    model = engram_bnn((8,), 6, hidden=(32,), max_tasks=2, engram_fraction=0.5, lda_features=16, lda_weight=0.5)
    data = []
    for t, classes in enumerate(((0, 1), (2, 3))):
        y = rng.choice(classes, 300).astype(np.int32)
        x = (rng.normal(size=(300, 8)) + 2.0 * t).astype(np.float32)
        model.begin_task(t)
        model.compile(optimizer="adam", loss=LOSS, metrics=["accuracy"])
        model.fit(x, y, batch_size=50, epochs=1, verbose=0)
        data.append((x, y))
    x, y = np.concatenate([d[0] for d in data]), np.concatenate([d[1] for d in data])
    model.set_inference("infer")
    out = model.predict(x, verbose=0)
    np.testing.assert_allclose(np.exp(out).sum(axis=-1), 1.0, rtol=1e-5)  # a distribution
    # By hand: the chosen engram's network log-probabilities plus 0.5 x the
    # discriminant's, normalized over the engram's two classes; argmax among them.
    chosen = model.infer_tasks(x).numpy()
    logits = np.stack([model((x, np.full(len(x), t, np.int32))).numpy() for t in (0, 1)])[chosen, np.arange(len(x))]
    groups = model.task_discriminant.group_scores(tf.constant(x)).numpy()[np.arange(len(x)), chosen]
    classes = np.array([[0, 1], [2, 3]])[chosen]
    pick = lambda a: np.take_along_axis(a, classes, axis=1)  # noqa: E731
    log_softmax = lambda a: a - np.log(np.exp(a - a.max(-1, keepdims=True)).sum(-1, keepdims=True)) - a.max(-1, keepdims=True)  # noqa: E731
    poe = log_softmax(pick(log_softmax(logits)) + 0.5 * log_softmax(pick(groups)))
    eps = 1e-3 / 6
    np.testing.assert_allclose(pick(out), np.log(1 - eps) + poe, atol=1e-4)
    np.testing.assert_array_equal(out.argmax(-1), np.take_along_axis(classes, poe.argmax(-1)[:, None], 1)[:, 0])
    # The other four classes share eps = 1e-3 / 6 of the mass.
    others = np.ones_like(out, bool)
    np.put_along_axis(others, classes, False, axis=1)
    np.testing.assert_allclose(out[others], np.log(eps / 4), rtol=1e-5)
    # Keras' cross-entropy on them is of normal size: at most -log(eps / 4) = 10.1 per sample.
    loss, accuracy = model.evaluate(x, y, verbose=0)
    assert 0.0 < loss < 10.1 and np.isfinite(loss)
    assert accuracy == pytest.approx((out.argmax(-1) == y).mean())
