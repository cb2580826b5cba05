"""Speed, memory and size benchmark: ratios measured in one run on this machine.

1. Training step time of engram_bnn (engrams + MetaplasticAdam) vs the plain Larq bnn
   (Adam) and the full-precision mlp, same widths, same in-memory batch; also engram
   (Adam) and mbnn to split the cost between gating and the optimizer.
   Target: engram_bnn <= 1.2x the plain BNN's step time.
2. "infer"-mode evaluation time as the number of stored engrams grows (expected linear).
3. Peak host RSS (and GPU peak where present) of each method over one full scenario,
   each method in a fresh process, as ratios to engram_bnn.
4. Model size from Larq's ModelProfile: binary kernels at 1 bit vs everything float32.

    python experiments/benchmark.py                      # 2048-2048, Split MNIST (class)
    python experiments/benchmark.py --hidden=256,256 --memory_methods=engram_bnn,bnn
"""
import json
import os
import subprocess
import sys
import time

from absl import app, flags

import larq_engrams as le
import larq as lq
import numpy as np
import tensorflow as tf

from larq_engrams import benchmarks, methods
from larq_engrams.training import ContinualTrainer

FLAGS = flags.FLAGS
flags.DEFINE_list("hidden", ["2048", "2048"], "Hidden widths of every model.")
flags.DEFINE_integer("batch_size", 100, "Batch size for the step timings.")
flags.DEFINE_integer("steps", 30, "Timed training steps per model (after warm-up).")
flags.DEFINE_integer("max_engrams", 10, "Largest number of stored engrams for the infer timing.")
flags.DEFINE_list("memory_methods", ["engram_bnn", "bnn", "mbnn", "finetune", "ewc", "si"],
                  "Methods whose peak memory over one scenario is measured.")
flags.DEFINE_integer("memory_epochs", 1, "Epochs per task for the memory runs.")
flags.DEFINE_string("memory_child", None, "Internal: measure one method and print JSON.")
flags.DEFINE_string("output", None, "Also write the measurements as JSON here.")

STEP_MODELS = ("engram_bnn", "engram", "mbnn", "bnn", "finetune")


def hidden():
    return tuple(int(h) for h in FLAGS.hidden)


def step_time(method, scenario, x, y):
    setup = methods.build(method, scenario, hidden=hidden())
    model, optimizer = setup.model, setup.optimizer()
    if isinstance(model, le.EngramModel):
        model.begin_task(0)
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def step(xb, yb):
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss

    for _ in range(3):
        step(x, y)
    best = float("inf")
    for _ in range(3):  # best of three blocks: the least disturbed by other processes
        start = time.perf_counter()
        for _ in range(FLAGS.steps):
            loss = step(x, y)
        float(loss)
        best = min(best, (time.perf_counter() - start) / FLAGS.steps)
    return best


def infer_times(scenario, x):
    model = le.engram_bnn(scenario.input_shape, scenario.num_classes, hidden=hidden(), max_tasks=FLAGS.max_engrams)
    out = []
    for k in range(1, FLAGS.max_engrams + 1):
        model.begin_task(k - 1)
        model.set_inference("infer")
        predict = tf.function(lambda xb: model(xb, training=False))
        predict(x)
        start = time.perf_counter()
        for _ in range(5):
            result = predict(x)
        float(tf.reduce_sum(result))
        out.append((time.perf_counter() - start) / 5)
    return out


def memory_child(method):
    scenario = benchmarks.split_mnist("class", batch_size=FLAGS.batch_size)
    setup = methods.build(method, scenario, hidden=hidden())
    result = ContinualTrainer(setup.model, setup.optimizer, epochs=FLAGS.memory_epochs,
                              callbacks=setup.callbacks, verbose=0).fit(setup.scenario)
    print(json.dumps({"method": method, "memory": {k: v for k, v in result.memory.items() if k != "tasks"},
                      "acc": result.metrics["acc"]}))


def model_sizes(scenario):
    rows = []
    for method in ("engram_bnn", "bnn", "finetune"):
        model = methods.build(method, scenario, hidden=hidden()).model
        profile = lq.models.ModelProfile(model)
        masks = sum(int(np.prod(layer.engram_masks.shape)) for layer in getattr(model, "engram_layers", []))
        rows.append((method, profile.memory / 8 / 2**20, profile.fp_equivalent_memory / 8 / 2**20,
                     masks * 4 / 2**20))
    return rows


def main(argv):
    del argv
    if FLAGS.memory_child:
        return memory_child(FLAGS.memory_child)
    scenario = benchmarks.split_mnist("class", batch_size=FLAGS.batch_size)
    x, y = next(iter(scenario[0].train))
    device = "GPU: " + tf.config.list_physical_devices("GPU")[0].name if tf.config.list_physical_devices("GPU") else "CPU"
    print(f"device: {device}; {os.cpu_count()} CPU cores; hidden {'-'.join(FLAGS.hidden)}; batch {FLAGS.batch_size}; "
          f"data: {scenario.source}\n")
    report = {"device": device, "hidden": list(hidden()), "batch_size": FLAGS.batch_size}

    print("1. training step time (best of 3 blocks of", FLAGS.steps, "steps)")
    times = {m: step_time(m, scenario, x, y) for m in STEP_MODELS}
    for method, seconds in times.items():
        print(f"   {method:11s} {1000 * seconds:8.2f} ms/step  {FLAGS.batch_size / seconds:10,.0f} examples/s  "
              f"x{seconds / times['bnn']:.2f} of bnn")
    ratio = times["engram_bnn"] / times["bnn"]
    print(f"   engram_bnn / bnn step time: {ratio:.2f} (target <= 1.2: {'met' if ratio <= 1.2 else 'NOT met'})")
    report["step_seconds"] = times

    print("\n2. 'infer' evaluation of", int(x.shape[0]), "examples vs stored engrams")
    infer = infer_times(scenario, x)
    for k, seconds in enumerate(infer, 1):
        print(f"   {k:2d} engrams: {1000 * seconds:8.2f} ms  ({1000 * seconds / k:6.2f} ms per engram)")
    slope = np.polyfit(np.arange(1, len(infer) + 1), infer, 1)
    print(f"   linear fit: {1000 * slope[0]:.2f} ms per engram + {1000 * slope[1]:.2f} ms")
    report["infer_seconds"] = infer

    print("\n3. peak memory over Split MNIST (class), one fresh process per method,", FLAGS.memory_epochs, "epoch(s)/task")
    peaks = {}
    for method in FLAGS.memory_methods:
        proc = subprocess.run([sys.executable, __file__, f"--memory_child={method}", f"--hidden={','.join(FLAGS.hidden)}",
                               f"--batch_size={FLAGS.batch_size}", f"--memory_epochs={FLAGS.memory_epochs}"],
                              capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        if proc.returncode != 0:
            raise RuntimeError(f"memory run of {method} failed:\n{proc.stderr[-2000:]}")
        peaks[method] = json.loads(proc.stdout.strip().splitlines()[-1])["memory"]
    base = peaks.get("engram_bnn") or next(iter(peaks.values()))
    for method, memory in peaks.items():
        gpu = memory["peak_gpu_bytes"]
        gpu_text = "absent (no GPU)" if gpu is None else f"{gpu / 2**20:.0f} MiB (x{gpu / base['peak_gpu_bytes']:.2f})"
        print(f"   {method:11s} peak RSS {memory['peak_rss_bytes'] / 2**20:7.0f} MiB "
              f"(x{memory['peak_rss_bytes'] / base['peak_rss_bytes']:.2f} of engram_bnn), "
              f"before {memory['rss_before_bytes'] / 2**20:5.0f} MiB; GPU peak {gpu_text}")
    report["memory"] = peaks

    print("\n4. model size (Larq ModelProfile: binary kernels at 1 bit)")
    sizes = model_sizes(scenario)
    for method, actual, fp32, masks in sizes:
        print(f"   {method:11s} {actual:7.2f} MiB as deployed vs {fp32:7.2f} MiB all-float32 "
              f"(x{fp32 / actual:.1f})" + (f"; includes {masks:.2f} MiB of float32 engram masks" if masks else ""))
    report["model_size_mib"] = {m: {"deployed": a, "float32": f, "engram_masks": k} for m, a, f, k in sizes}
    if FLAGS.output:
        with open(FLAGS.output, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    app.run(main)
