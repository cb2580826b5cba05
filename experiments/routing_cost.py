"""What routing one input costs on a device as the engrams grow: the C export's
`le_infer` timed at K engrams, scoring every group or a shortlist of k
(`EngramModel(router_shortlist=k)`, docs/method.md section 4).

For each K in --engrams an engram model (784 inputs, 10 classes, --hidden units, the
router of a domain-IL long sequence: M dense features, each task's class evidence) gets
K tasks of synthetic inputs (one random permutation of one shared set of random images
per task, so the tasks differ as Permuted MNIST's do; no data set is read, and no network
is trained: routing does not depend on the weights). It is exported with `save_c`,
built with `cc -O2`, and a C loop times `le_infer` over --inputs examples, in
--rounds alternating rounds (each round times every build in turn); the table gives the
median per-input time, its ratio to the first K with every group, and the multiply-adds
(`task_inference.scoring_multiply_adds` plus D M for the features). Timings move on a
shared machine: the ratios, measured in one run, are what the script is for.

    taskset -c 0 python experiments/routing_cost.py --engrams=10,100 --shortlist=16 --output=results/issue44/routing_cost
"""
import os
import shutil
import subprocess
import tempfile

import numpy as np
from absl import flags

import cli  # noqa: I001  (first: quiet TensorFlow start-up, binds tf.keras to Keras 2)

from larq_engrams import models
from larq_engrams.export import save_c
from larq_engrams.task_inference import scoring_multiply_adds

FLAGS = flags.FLAGS
flags.DEFINE_list("engrams", ["10", "100"], "Engram counts K.")
flags.DEFINE_integer("shortlist", 16, "The shortlist k compared with every group.", lower_bound=1)
flags.DEFINE_integer("features", 768, "Router features M (768: the router's default at 100 tasks).", lower_bound=1)
flags.DEFINE_list("hidden", ["64"], "Hidden widths (the engram network runs once per input either way).")
flags.DEFINE_integer("inputs", 2000, "Inputs timed per round.", lower_bound=1)
flags.DEFINE_integer("rounds", 5, "Alternating rounds; the median is reported.", lower_bound=1)
flags.DEFINE_string("output", None, "Write the table here (path without suffix: .md).")

INPUTS, CLASSES = 784, 10

_MAIN = r"""
#include <stdio.h>
#include <time.h>
#include "engram_model.h"
int main(int argc, char **argv) {
    if (argc < 3) return 2;
    FILE *in = fopen(argv[1], "rb");
    int n = 0, limit = 0;
    sscanf(argv[2], "%d", &limit);
    static float x[20000][LE_INPUTS];
    while (n < limit && n < 20000 && fread(x[n], sizeof(float), LE_INPUTS, in) == LE_INPUTS) ++n;
    float scores[LE_CLASSES];
    int32_t task, sink = 0;
    clock_t start = clock();
    for (int i = 0; i < n; ++i) sink += le_infer(x[i], scores, &task) + task;
    double seconds = (double)(clock() - start) / CLOCKS_PER_SEC;
    printf("%.9f %d\n", seconds / n, sink);
    return 0;
}
"""


def _tasks(engrams, rng, per_task=200):
    """K Permuted-MNIST-like tasks of synthetic images: one shared set of class
    prototypes plus noise, each task's pixels in its own random order."""
    prototypes = rng.random((CLASSES, INPUTS)).astype(np.float32) ** 3
    for _ in range(engrams):
        order = rng.permutation(INPUTS)
        y = rng.integers(0, CLASSES, per_task).astype(np.int32)
        x = np.clip(prototypes[y] + 0.3 * rng.random((per_task, INPUTS)).astype(np.float32), 0, 1)
        yield x[:, order], y


def _build(engrams, shortlist, folder):
    """The C build of a model with `engrams` observed tasks; returns (binary, test inputs)."""
    rng = np.random.default_rng(0)
    model = models.engram_bnn((INPUTS,), CLASSES, hidden=tuple(int(h) for h in FLAGS.hidden), max_tasks=engrams,
                              lda_features=FLAGS.features, router_features="dense", lda_class_covariance="task",
                              router_shortlist=shortlist, seed=0)
    tests = []
    for t, (x, y) in enumerate(_tasks(engrams, rng)):
        model.begin_task(t)
        model.observe_task_data(x[:150], y[:150])
        tests.append(x[150:])
    model.set_inference("infer")
    source = os.path.join(folder, "c")
    save_c(model, source)
    with open(os.path.join(source, "main.c"), "w") as f:
        f.write(_MAIN)
    binary = os.path.join(folder, "route")
    subprocess.run(["cc", "-std=c99", "-O2", "-o", binary, os.path.join(source, "main.c"),
                    os.path.join(source, "engram_model.c"), "-lm"], check=True, cwd=source)
    x = np.concatenate(tests)
    return binary, x[rng.permutation(len(x))[:FLAGS.inputs]]


def main(argv):
    del argv
    if shutil.which("cc") is None:
        raise SystemExit("routing_cost: needs a C compiler (cc).")
    cases = [(int(k), None) for k in FLAGS.engrams] + [(int(k), FLAGS.shortlist) for k in FLAGS.engrams
                                                         if int(k) > FLAGS.shortlist]
    with tempfile.TemporaryDirectory() as root:
        builds = {}
        for engrams, shortlist in cases:
            folder = os.path.join(root, f"{engrams}-{shortlist}")
            os.makedirs(folder)
            binary, x = _build(engrams, shortlist, folder)
            path = os.path.join(folder, "x.bin")
            x.astype(np.float32).tofile(path)
            builds[(engrams, shortlist)] = (binary, path)
            print(f"built K = {engrams}, shortlist {shortlist}", flush=True)
        times = {case: [] for case in cases}
        for _ in range(FLAGS.rounds):
            for case, (binary, path) in builds.items():
                out = subprocess.run([binary, path, str(FLAGS.inputs)], check=True, capture_output=True, text=True)
                times[case].append(float(out.stdout.split()[0]))
    base = float(np.median(times[cases[0]]))
    rows = ["| engrams K | routing | microseconds per input (median of rounds) | ratio to the first row | "
            "multiply-adds (D M + scoring) |", "|---|---|---|---|---|"]
    for engrams, shortlist in cases:
        median = float(np.median(times[(engrams, shortlist)]))
        macs = INPUTS * FLAGS.features + scoring_multiply_adds(engrams, CLASSES, FLAGS.features, shortlist,
                                                               task_evidence=True)
        rows.append(f"| {engrams} | {'every group' if shortlist is None else f'shortlist {shortlist}'} | "
                    f"{1e6 * median:.0f} | {median / base:.2f} | {macs / 1e6:.2f} M |")
    title = (f"`le_infer` (C export, cc -O2) per input: M = {FLAGS.features} dense features, {INPUTS} inputs, "
             f"{CLASSES} classes, hidden {','.join(FLAGS.hidden)}, each task's class evidence; {FLAGS.inputs} inputs "
             f"x {FLAGS.rounds} rounds (`experiments/routing_cost.py`)")
    cli.report_table(title, "\n".join(rows), FLAGS.output)


if __name__ == "__main__":
    cli.run(main)
