"""Learning on the device: the NumPy runtime adds a new task's classes to its router's
statistics, without TensorFlow and without storing inputs, and predicts them by the
router alone; checked against the router and `slda_rf` trained in TensorFlow."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import larq_engrams as le
from larq_engrams import runtime
from larq_engrams.class_statistics import ClassStatisticsClassifier
from larq_engrams.export import save_packed

LOSS = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _three_tasks(seed=0, n=240):
    """Class-IL: classes (0, 1), (2, 3), (4, 5), Gaussian clusters in 12 dimensions."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(6, 12)) * 2.0
    tasks = []
    for classes in ((0, 1), (2, 3), (4, 5)):
        y = rng.choice(classes, 2 * n).astype(np.int32)
        x = (centers[y] + rng.normal(size=(2 * n, 12))).astype(np.float32)
        tasks.append(((x[:n], y[:n]), (x[n:], y[n:])))
    return tasks


def _packed_on_two_tasks(tasks, path, epochs, **kwargs):
    """An engram model trained on the first two of `tasks`, written with its router's
    statistics (`save_packed(learning=True)`) to `path`; returns the Keras model."""
    model = le.engram_bnn((12,), 6, hidden=(48,), max_tasks=2, engram_fraction=0.5, lda_features=64, **kwargs)
    for t in (0, 1):
        model.begin_task(t)
        model.compile(optimizer="adam", loss=LOSS)
        model.fit(*tasks[t][0], batch_size=40, epochs=epochs, verbose=0)
    model.set_inference("infer")
    save_packed(model, str(path), learning=True)
    return model


_DEVICE = """
import json, sys, numpy as np
from larq_engrams import runtime
net = runtime.load(sys.argv[1])
x, y, x_test = np.load(sys.argv[2]), np.load(sys.argv[3]), np.load(sys.argv[4])
task = net.add_task()
for start in range(0, len(x), 64):  # a stream of batches, each seen once
    net.learn(x[start:start + 64], y[start:start + 64], task)
np.save(sys.argv[5], net.predict(x_test))
print(json.dumps({"task": task, "learning_bytes": net.learning_bytes(),
                  "tensorflow": [m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tf_keras", "larq")]}))
"""


@pytest.mark.parametrize("class_covariance", ["shared", "task"])
def test_a_device_learns_a_new_tasks_classes_as_slda_does_in_tensorflow(tmp_path, class_covariance):
    tasks = _three_tasks()
    model = _packed_on_two_tasks(tasks, tmp_path / "m.npz", epochs=2, lda_class_covariance=class_covariance)
    (x_new, y_new), (x_new_test, y_new_test) = tasks[2]
    for name, a in (("x", x_new), ("y", y_new), ("x_test", x_new_test)):
        np.save(tmp_path / f"{name}.npy", a)
    proc = subprocess.run([sys.executable, "-c", _DEVICE, *(str(tmp_path / f) for f in
                           ("m.npz", "x.npy", "y.npy", "x_test.npy", "out.npy"))],
                          capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["tensorflow"] == [] and report["task"] == 2  # max_tasks=2: a third task row was added
    m = model.task_discriminant.num_features
    scatters = 2 if class_covariance == "task" else 1  # "task": the learned task's own scatter too
    assert report["learning_bytes"] == 4 * (3 * 6 + 3 * 6 * m + scatters * m * (m + 1) // 2)
    device = np.load(tmp_path / "out.npy").argmax(axis=-1)
    # slda_rf in TensorFlow on the same features (seed, count, shrinkage), all three tasks.
    slda = ClassStatisticsClassifier((12,), 6, rule="slda", shrinkage=model.lda_shrinkage, features=64, seed=0,
                                     task_groups=3, class_covariance=class_covariance)
    slda.compile(loss=LOSS, metrics=["accuracy"])
    for t, ((x, y), _) in enumerate(tasks):
        slda.begin_task(t)
        slda.fit(x, y, batch_size=64, epochs=1, verbose=0)
    reference = slda.predict(x_new_test, verbose=0).argmax(axis=-1)
    device_accuracy, slda_accuracy = (device == y_new_test).mean(), (reference == y_new_test).mean()
    assert device_accuracy > 0.8 and abs(device_accuracy - slda_accuracy) <= 0.01
    # The old tasks still go through their engrams; the new classes are now reachable.
    net = runtime.load(str(tmp_path / "m.npz"))
    assert np.isin(net.predict(x_new_test).argmax(-1), [0, 1, 2, 3]).all()  # before learning: never 4 or 5


def test_a_shortlist_sees_the_router_the_device_has_learned_since_its_last_prediction(tmp_path):
    tasks = _three_tasks(seed=1)
    _packed_on_two_tasks(tasks, tmp_path / "m.npz", epochs=1, router_shortlist=2)
    net = runtime.load(str(tmp_path / "m.npz"))
    (x_new, y_new), (x_new_test, _) = tasks[2]
    task = net.add_task()
    # predicted while the new task has no data: its mean group is empty and never shortlisted
    assert not (net.infer_tasks(x_new_test) == task).any()
    net.learn(x_new, y_new, task)
    # three engrams, a shortlist of two: the new task's mean group, learned since, now competes
    assert (net.infer_tasks(x_new_test) == task).mean() > 0.8


def test_learning_needs_the_statistics_and_an_opened_task(tmp_path):
    model = le.engram_bnn((12,), 6, hidden=(16,), max_tasks=2, lda_features=16)
    model.begin_task(0)
    save_packed(model, str(tmp_path / "plain.npz"))
    net = runtime.load(str(tmp_path / "plain.npz"))
    with pytest.raises(ValueError, match=r"save_packed\(model, path, learning=True\)"):
        net.add_task()
    save_packed(model, str(tmp_path / "learn.npz"), learning=True)
    net = runtime.load(str(tmp_path / "learn.npz"))
    with pytest.raises(ValueError, match="opened by add_task"):
        net.learn(np.zeros((2, 12), np.float32), [0, 1], task=1)
    task = net.add_task()
    assert task == 1  # the first router row without data
    with pytest.raises(ValueError, match=r"one label in \[0, 6\)"):
        net.learn(np.zeros((2, 12), np.float32), [0, 9], task)
