"""`export.save_c`: the C99 export builds with `cc` and agrees with the NumPy runtime on
every example (skipped with a reason where no C compiler exists)."""
import os
import shutil
import subprocess

import numpy as np
import pytest
import tensorflow as tf

import larq_engrams as le
from larq_engrams import runtime
from larq_engrams.export import save_c, save_packed

CC = shutil.which("cc") or shutil.which("gcc")
pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler (cc) on this machine")
LOSS = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)

_MAIN = r"""
#include <stdio.h>
#include "engram_model.h"
int main(int argc, char **argv) {
    if (argc < 2) return 2;
    FILE *in = fopen(argv[1], "rb");
    float x[LE_INPUTS], scores[LE_CLASSES], logits[LE_CLASSES];
    int32_t task;
    while (fread(x, sizeof(float), LE_INPUTS, in) == LE_INPUTS) {
        int32_t label = le_infer(x, scores, &task);
        printf("%d %d", label, task);
        for (int c = 0; c < LE_CLASSES; ++c) printf(" %.6g", scores[c]);
        for (int k = 0; k < LE_ENGRAMS; ++k) {
            le_task_logits(x, le_task_ids[k], logits);
            for (int c = 0; c < LE_CLASSES; ++c) printf(" %.6g", logits[c]);
        }
        printf("\n");
    }
    return 0;
}
"""


def _images(seed=0, n=150):
    """Two class-IL tasks of 10 x 10 images: classes (0, 1) and (2, 3), bars and blobs."""
    rng = np.random.default_rng(seed)
    tasks = []
    for classes in ((0, 1), (2, 3)):
        y = rng.choice(classes, n).astype(np.int32)
        x = rng.random((n, 10, 10)).astype(np.float32) * 0.4
        for i, c in enumerate(y):
            x[i, 2 * c: 2 * c + 2, :] += 1.0
        tasks.append((x, y))
    return tasks


@pytest.mark.parametrize("router_features,class_covariance,shortlist", [
    ("dense", "shared", None), ("conv", "shared", None), ("dense", "task", None), ("dense", "task", 1)])
def test_the_c_export_builds_and_agrees_with_the_runtime(tmp_path, router_features, class_covariance, shortlist):
    tasks = _images()
    model = le.engram_bnn((10, 10), 4, hidden=(70, 40), max_tasks=3, engram_fraction=0.5, lda_features=64,
                          router_features=router_features, lda_class_covariance=class_covariance,
                          router_shortlist=shortlist)
    for t, (x, y) in enumerate(tasks):
        model.begin_task(t)
        model.compile(optimizer="adam", loss=LOSS)
        model.fit(x, y, batch_size=50, epochs=2, verbose=0)
    model.set_inference("infer")
    sizes = save_c(model, str(tmp_path / "c"))
    assert sizes["const_bytes"] > 0 and sizes["buffer_bytes"] > 0
    (tmp_path / "c" / "main.c").write_text(_MAIN)
    binary = str(tmp_path / "c" / "predict")
    build = subprocess.run([CC, "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-o", binary,
                            str(tmp_path / "c" / "main.c"), str(tmp_path / "c" / "engram_model.c"), "-lm"],
                           capture_output=True, text=True, cwd=str(tmp_path / "c"))
    assert build.returncode == 0, build.stderr[-3000:]
    x = np.concatenate([t[0] for t in tasks]).reshape(len(tasks) * 150, -1)
    x.astype(np.float32).tofile(tmp_path / "x.bin")
    run = subprocess.run([binary, str(tmp_path / "x.bin")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    rows = np.array([line.split() for line in run.stdout.splitlines()], np.float64)
    assert len(rows) == len(x)
    save_packed(model, str(tmp_path / "m.npz"))
    net = runtime.load(str(tmp_path / "m.npz"))
    np.testing.assert_array_equal(rows[:, 1], net.infer_tasks(x))  # the same engram for every example
    scores = net.predict(x)
    np.testing.assert_array_equal(rows[:, 0], scores.argmax(-1))  # the same class for every example
    np.testing.assert_allclose(rows[:, 2:6], scores, atol=1e-3, rtol=1e-4)
    for k, task in enumerate(net.allocated_tasks):  # each engram's logits, the task given
        np.testing.assert_allclose(rows[:, 6 + 4 * k: 10 + 4 * k], net.predict(x, task=task), atol=1e-3, rtol=1e-4)


def test_save_c_says_what_it_exports(tmp_path):
    with pytest.raises(ValueError, match="for a plain BNN use save_packed"):
        save_c(le.bnn((4,), 2, hidden=(8,)), str(tmp_path))
    no_router = le.engram_bnn((4,), 2, hidden=(8,), max_tasks=1, router=False)
    no_router.begin_task(0)
    with pytest.raises(ValueError, match="no router"):
        save_c(no_router, str(tmp_path))
    assert not os.listdir(tmp_path)
