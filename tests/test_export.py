"""The bit-packed export and the NumPy runtime: format, exactness against Keras, errors."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import larq_engrams as le
from larq_engrams import runtime
from larq_engrams.export import _integer_thresholds, save_packed
from larq_engrams.task_inference import floored_log_softmax

LOSS = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def test_signs_pack_at_one_bit_and_round_trip():
    w = np.array([[0.3, -0.1, 0.0, -2.0, 1.0, 1.0, -1.0, 0.5, -0.5]], np.float32)
    bits = runtime.pack_signs(w)
    assert bits.shape == (1, 2) and bits.dtype == np.uint8
    # little bit order, 1 for a negative weight: entries 1, 3, 6, 8 are negative
    assert bits[0, 0] == (1 << 1) | (1 << 3) | (1 << 6) and bits[0, 1] == 1
    np.testing.assert_array_equal(runtime.unpack_signs(bits, 9), [[1, -1, 1, -1, 1, 1, -1, 1, -1]])


def test_integer_thresholds_by_hand():
    # unit 0: +1 iff 2z - 3 >= 0 (z >= 2); unit 1: +1 iff -z + 1 >= 0 (z <= 1);
    # unit 2: always +1; unit 3: always -1.
    def sign_of(z):
        y = np.stack([2 * z[:, 0] - 3, -z[:, 1] + 1, np.ones(len(z)), -np.ones(len(z))], axis=1)
        return np.where(y >= 0, 1, -1)

    threshold, direction = _integer_thresholds(sign_of, 4, 4)
    np.testing.assert_array_equal(direction, [1, -1, 1, 1])
    np.testing.assert_array_equal(threshold[:3], [2, 1, -4])
    assert threshold[3] > 4  # never reached


def test_numpy_floored_log_softmax_is_the_librarys():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 5)).astype(np.float32) * 3
    allowed = rng.random((6, 5)) < 0.5
    allowed[0] = True
    np.testing.assert_allclose(runtime.floored_log_softmax(logits, allowed),
                               floored_log_softmax(tf.constant(logits), tf.constant(allowed)).numpy(), rtol=1e-5,
                               atol=1e-5)


def _two_tasks(seed=0, n=300, d=16):
    rng = np.random.default_rng(seed)
    data = []
    for t, classes in enumerate(((0, 1), (2, 3))):
        y = rng.choice(classes, n).astype(np.int32)
        x = (rng.normal(size=(n, d)) + 1.5 * t + 0.8 * y[:, None] * rng.normal(size=d)).astype(np.float32)
        data.append((x, y))
    return data


def _engram_model(data, class_covariance="shared", shortlist=None):
    model = le.engram_bnn((16,), 4, hidden=(48, 40), max_tasks=2, engram_fraction=0.5, lda_features=32,
                          lda_class_covariance=class_covariance, router_shortlist=shortlist)
    for t, (x, y) in enumerate(data):
        model.begin_task(t)
        model.compile(optimizer=le.MetaplasticAdam(0.01), loss=LOSS)
        model.fit(x, y, batch_size=50, epochs=2, verbose=0)
    return model


@pytest.mark.parametrize("class_covariance,shortlist", [("shared", None), ("task", None), ("shared", 1)])
def test_engram_model_runs_the_same_without_tensorflow(tmp_path, class_covariance, shortlist):
    data = _two_tasks()
    model = _engram_model(data, class_covariance, shortlist)
    path = str(tmp_path / "engram.npz")
    manifest = save_packed(model, path)
    assert manifest["allocated_tasks"] == [0, 1] and manifest["bit_order"] == "little"
    assert manifest["router"]["shortlist"] == shortlist
    net = runtime.load(path)
    x = np.concatenate([d[0] for d in data])
    for t in (0, 1):
        # Layer by layer: the runtime's outputs are Keras' sign activations (gated).
        h = model.flatten(x)
        ours = net.hidden_outputs(x, task=t)
        for i, layer in enumerate(model.engram_layers):
            h = layer(h, training=False, task=t)
            keras = h.numpy()
            if i == 0:  # float sums of real inputs: agreement, not identity
                assert (ours[0] == keras).mean() > 0.999
                h = tf.constant(ours[0])  # the next layer from the same inputs
            else:
                np.testing.assert_array_equal(ours[i], keras)
        ids = np.full(len(x), t, np.int32)
        np.testing.assert_allclose(net.predict(x, task=t), model((x, ids)).numpy(), rtol=1e-4, atol=1e-3)
    model.set_inference("infer")
    keras = model.predict(x, verbose=0)
    assert (net.infer_tasks(x) == model.infer_tasks(x).numpy()).mean() > 0.999
    assert (net.predict(x).argmax(-1) == keras.argmax(-1)).mean() > 0.999
    np.testing.assert_allclose(net.predict(x), keras, atol=1e-2)
    # one example, unbatched, gives the batch's first row
    np.testing.assert_allclose(net.predict(x[0]), net.predict(x[:1]))


def test_plain_bnn_runs_the_same_without_tensorflow(tmp_path):
    data = _two_tasks(seed=1)
    model = le.bnn((16,), 4, hidden=(48, 40))
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01), loss=LOSS)
    x, y = (np.concatenate(a) for a in zip(*data))
    model.fit(x, y, batch_size=50, epochs=2, verbose=0)
    path = str(tmp_path / "bnn.npz")
    save_packed(model, path)
    net = runtime.load(path)
    keras = model.predict(x, verbose=0)
    assert (net.predict(x).argmax(-1) == keras.argmax(-1)).mean() > 0.999
    close = np.isclose(net.predict(x), keras, rtol=1e-4, atol=1e-3).all(axis=-1)
    assert close.mean() > 0.99  # a first-layer unit at its threshold changes a whole row


def test_packed_files_of_another_version_or_corrupt_fail_in_one_line(tmp_path):
    data = _two_tasks(seed=2, n=100)
    model = le.bnn((16,), 4, hidden=(16,))
    path = str(tmp_path / "bnn.npz")
    save_packed(model, path)
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    manifest = json.loads(arrays["manifest"].tobytes())

    def write(name, manifest_changes=None, arrays_changes=None):
        out = dict(arrays, **(arrays_changes or {}))
        out["manifest"] = np.frombuffer(json.dumps({**manifest, **(manifest_changes or {})}).encode(), np.uint8)
        target = str(tmp_path / name)
        with open(target, "wb") as f:
            np.savez(f, **out)
        return target

    flipped = arrays["hidden_0/kernel_bits"].copy()
    flipped[0, 0] ^= 1
    cases = {
        write("newer.npz", {"version": runtime.VERSION + 1}):
            f"version {runtime.VERSION + 1}.*save_packed.*with this package's version",
        write("other.npz", {"format": "something-else"}): "something-else",
        write("flipped.npz", arrays_changes={"hidden_0/kernel_bits": flipped}): "corrupt",
    }
    truncated = str(tmp_path / "truncated.npz")
    with open(path, "rb") as f, open(truncated, "wb") as g:
        g.write(f.read()[:200])
    cases[truncated] = "not a packed larq-engrams network"
    for target, message in cases.items():
        with pytest.raises(runtime.PackedFormatError, match=message) as error:
            runtime.load(target)
        assert "\n" not in str(error.value)
        assert "save_packed(model, path)" in str(error.value)  # and says what to do
    assert runtime.load(path).predict(data[0][0]).shape == (100, 4)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_the_runtime_refuses_non_finite_inputs_in_one_line(tmp_path, bad):
    data = _two_tasks(seed=4, n=60)
    model = _engram_model(data)
    save_packed(model, str(tmp_path / "engram.npz"))
    net = runtime.load(str(tmp_path / "engram.npz"))
    x = data[0][0][:5].copy()
    x[3, 7] = bad
    for call in (lambda: net.predict(x), lambda: net.predict(x, task=0), lambda: net.infer_tasks(x),
                 lambda: net.predict(x[3])):
        with pytest.raises(ValueError, match=r"NaN or Inf in 1 of \d examples") as error:
            call()
        assert "\n" not in str(error.value)
    assert str(error.value).endswith("(the first: example 0); clean the inputs.")  # the single example
    assert net.predict(np.nan_to_num(x, posinf=0.0, neginf=0.0)).shape == (5, 4)


def test_importing_the_runtime_never_loads_tensorflow():
    code = ("import sys, larq_engrams.runtime; "
            "assert not [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tf_keras', 'larq')], "
            "sorted(m for m in sys.modules if m.startswith('tensorflow'))[:3]; print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_task_incremental_model_without_a_router_runs_on_its_task_ids(tmp_path):
    data = _two_tasks(seed=3)
    model = le.engram_bnn((16,), 4, hidden=(48, 40), max_tasks=2, engram_fraction=0.5, router=False)
    for t, (x, y) in enumerate(data):
        model.begin_task(t)
        model.compile(optimizer=le.MetaplasticAdam(0.01), loss=LOSS)
        model.fit((x, np.full(len(x), t, np.int32)), y, batch_size=50, epochs=2, verbose=0)
    path = str(tmp_path / "task_il.npz")
    manifest = save_packed(model, path)
    assert manifest["router"] is None and not any(name.startswith("router/") for name in np.load(path).files)
    net = runtime.load(path)
    x = np.concatenate([d[0] for d in data])
    ids = np.repeat(np.array([1, 0], np.int32), [250, len(x) - 250])  # mixed: both engrams in one batch
    keras = model((x, ids)).numpy()
    ours = net.predict(x, task=ids)
    assert (ours.argmax(-1) == keras.argmax(-1)).mean() > 0.999
    assert np.isclose(ours, keras, rtol=1e-4, atol=1e-3).all(axis=-1).mean() > 0.99
    # per-example ids give each engram's own logits, row for row
    np.testing.assert_array_equal(ours[:250], net.predict(x[:250], task=1))
    np.testing.assert_array_equal(ours[250:], net.predict(x[250:], task=0))
    for call in (lambda: net.predict(x), lambda: net.infer_tasks(x), lambda: net.predict(x, task=ids[:5])):
        with pytest.raises(ValueError, match="task=") as error:
            call()
        assert "\n" not in str(error.value)


def test_save_packed_says_in_one_line_why_a_model_cannot_be_packed(tmp_path):
    excitation = le.engram_bnn((16,), 4, hidden=(8,), max_tasks=2, lda_features=16, confidence="excitation")
    with pytest.raises(ValueError, match="this model uses 'excitation'"):
        save_packed(excitation, str(tmp_path / "b.npz"))
