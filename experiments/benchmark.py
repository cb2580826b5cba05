"""Speed, memory and size benchmark: every ratio is measured in one run on this machine.

1. Training step time of engram_bnn (sparse engrams + MetaplasticAdam), engram (Adam),
   mbnn, bnn (Larq BNN) and finetune (float32 MLP) at several widths, each step as
   `ContinualTrainer` runs it (`larq_engrams.training.train_step`; XLA for the dense
   models, the sparse engram step with its compact per-epoch copies). The dense BNN is
   also timed without XLA, as the reference before this package compiled it.
   Target: engram_bnn <= 0.35x bnn at 2048-2048.
2. "infer" evaluation time of one batch vs the number of stored engrams, against one
   dense bnn forward pass of the same batch. Target: 5 engrams <= 1.0x.
3. Epoch times: mbnn at 1024-1024 (batch 100, 8,000 examples) in the trainer, against
   the PyTorch reference implementation of Laborieux et al. (1.65 s per epoch on this
   2-core CPU, measured by the issue's author; target <= 0.6x); engram_bnn vs bnn under
   a Keras user's `model.fit`.
4. Model memory: peak host RSS over Split MNIST of each method at the measured width
   minus its peak at width 16 (each run a fresh process): what grows with the network
   (weights, optimizer state, activations), without TensorFlow's own runtime, graph
   and compilation caches (~600-900 MiB here, about the same for every method), with
   glibc's mmap threshold fixed (`--malloc_mmap_threshold`) so that freed tensors leave
   the resident set; and the bytes of the state each run keeps (every variable of the
   model, optimizer, slot cache and method callbacks), which no allocator blurs. The
   GPU peak where a GPU exists.
5. Model size from Larq's ModelProfile: binary kernels at 1 bit vs everything float32.

    python experiments/benchmark.py --output=results/benchmark.json
    python experiments/benchmark.py --widths=256 --memory_methods=engram_bnn,bnn   # quick
"""
import json
import os
import subprocess
import sys
import time

from absl import flags

import cli  # noqa: I001  (first: quiet TensorFlow start-up, binds tf.keras to Keras 2)

import larq_engrams as le
import larq as lq
import numpy as np
import tensorflow as tf

from larq_engrams import benchmarks, methods
from larq_engrams.training import ContinualTrainer, train_step

FLAGS = flags.FLAGS
flags.DEFINE_list("widths", ["1024", "2048", "4096"], "Hidden widths (two layers each) for the step timings.")
flags.DEFINE_integer("width", 2048, "Width of the infer, fit and memory measurements.")
flags.DEFINE_integer("batch_size", 100, "Batch size.")
flags.DEFINE_integer("steps", 20, "Timed training steps per block (best of 3 blocks, after warm-up).")
flags.DEFINE_integer("max_engrams", 10, "Largest number of stored engrams for the infer timing.")
flags.DEFINE_list("memory_methods", ["engram_bnn", "bnn", "mbnn", "finetune", "ewc", "si"],
                  "Methods whose peak memory over one scenario is measured.")
flags.DEFINE_integer("memory_epochs", 1, "Epochs per task for the memory runs.")
flags.DEFINE_integer("malloc_mmap_threshold", 131072,
                     "Memory runs: glibc's MALLOC_MMAP_THRESHOLD_ in bytes (0: the C library's default). "
                     "By default glibc raises the threshold to the largest block freed (up to 32 MiB), "
                     "so freed tensors stay in the heap and the peak RSS holds transients of the "
                     "whole run; a fixed threshold returns them, and RSS follows live memory.")
flags.DEFINE_float("reference_epoch_seconds", 1.65,
                   "Epoch time of Laborieux et al.'s PyTorch code, mbnn 1024-1024, batch 100, 8,000 "
                   "examples, on the machine the benchmark runs on (measured separately).")
flags.DEFINE_string("memory_child", None, "Internal: measure one method and print JSON.")
flags.DEFINE_string("output", None, "Also write the measurements as JSON here.")

STEP_METHODS = ("engram_bnn", "engram", "mbnn", "bnn", "finetune")


def _best_time(fn, steps):
    best = float("inf")
    for _ in range(3):  # best of three blocks: the least disturbed by other processes
        start = time.perf_counter()
        for _ in range(steps):
            out = fn()
        tf.nest.map_structure(lambda t: t.numpy(), out)
        best = min(best, (time.perf_counter() - start) / steps)
    return best


def step_time(method, scenario, x, y, width, jit_compile="auto"):
    """Seconds per training step, compiled as ContinualTrainer compiles it."""
    setup = methods.build(method, scenario, hidden=(width, width))
    model, optimizer = setup.model, setup.optimizer()
    sparse = isinstance(model, le.EngramModel) and model.execution == "sparse"
    if isinstance(model, le.EngramModel):
        model.begin_task(0)
        model.load_engram_slots(optimizer)
    jit = (not sparse) if jit_compile == "auto" else jit_compile
    step = tf.function(lambda a, b: train_step(model, optimizer, a, b)[0], jit_compile=jit)
    for _ in range(3):
        step(x, y)
    return _best_time(lambda: step(x, y), FLAGS.steps)


def infer_times(scenario, x, y, width):
    """(seconds of "infer" with k = 1..max engrams, seconds of one dense bnn forward);
    "infer" includes task inference (each engram's statistics from the one batch)."""
    model = le.engram_bnn(scenario.input_shape, scenario.num_classes, hidden=(width, width),
                          max_tasks=FLAGS.max_engrams)
    out = []
    for k in range(1, FLAGS.max_engrams + 1):
        model.begin_task(k - 1)
        model.observe_task_data(x, y)
        model.set_inference("infer")
        predict = tf.function(lambda xb: model(xb, training=False))
        predict(x)
        out.append(_best_time(lambda: predict(x), 5))
    dense = methods.build("bnn", scenario, hidden=(width, width)).model
    forward = tf.function(lambda xb: dense(xb, training=False), jit_compile=True)  # as the evaluator runs it
    forward(x)
    return out, _best_time(lambda: forward(x), 10)


class _EpochTimer(tf.keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def trainer_epochs(method, width, tasks=2, epochs=3):
    """Epoch seconds in ContinualTrainer on Permuted MNIST; the median of the epochs
    after each task's first (which compiles the step for the task's engram shapes)."""
    scenario = benchmarks.permuted_mnist(tasks, batch_size=FLAGS.batch_size)
    setup = methods.build(method, scenario, hidden=(width, width))
    timer = _EpochTimer()
    ContinualTrainer(setup.model, setup.optimizer, epochs=epochs, verbose=0,
                     callbacks=[*setup.callbacks, timer]).fit(setup.scenario)
    steady = [s for i, s in enumerate(timer.seconds) if i % epochs]
    return float(np.median(steady)), timer.seconds


def fit_epochs(method, width, tasks=2, epochs=3):
    """Epoch seconds of a Keras user's `model.fit`, one fit per task (median of the
    epochs after each fit's first)."""
    scenario = benchmarks.permuted_mnist(tasks, batch_size=FLAGS.batch_size)
    setup = methods.build(method, scenario, hidden=(width, width))
    model, timer = setup.model, _EpochTimer()
    for task in scenario:
        if isinstance(model, le.EngramModel):
            model.begin_task(task.task_id)
        model.compile(optimizer=setup.optimizer(), metrics=["accuracy"],
                      loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      jit_compile=not isinstance(model, le.EngramModel))
        model.fit(task.train, epochs=epochs, verbose=0, callbacks=[timer])
    steady = [s for i, s in enumerate(timer.seconds) if i % epochs]
    return float(np.median(steady)), timer.seconds


def memory_child(method):
    scenario = benchmarks.split_mnist("class", batch_size=FLAGS.batch_size)
    setup = methods.build(method, scenario, hidden=(FLAGS.width, FLAGS.width))
    trainer = ContinualTrainer(setup.model, setup.optimizer, epochs=FLAGS.memory_epochs,
                               callbacks=setup.callbacks, verbose=0)
    result = trainer.fit(setup.scenario)
    memory = {k: v for k, v in result.memory.items() if k != "tasks"}
    memory["state_bytes"] = state_bytes(setup.model, trainer.optimizer, setup.callbacks)
    print(json.dumps({"method": method, "width": FLAGS.width, "memory": memory, "acc": result.metrics["acc"]}))


def state_bytes(model, optimizer, callbacks):
    """Bytes of every variable a run keeps: the model's, the optimizer's (slots), the
    engram models' compact slot cache and the method callbacks' (EWC's Fisher and
    anchors, SI's importances). Deterministic: no allocator in it."""
    variables = [*model.weights, *optimizer.variables()]
    if isinstance(model, le.EngramModel):
        variables += model.slot_cache.variables
    for cb in callbacks:
        state = getattr(cb, "checkpoint_variables", lambda: {})()
        variables += tf.nest.flatten(state)
    seen, total = set(), 0
    for v in variables:
        if id(v) not in seen:
            seen.add(id(v))
            total += int(tf.size(v)) * v.dtype.size  # cache variables have dynamic shapes
    return total


def memory_runs(width, tiny=16):
    """{method: {"peak": bytes at `width`, "tiny": bytes at `tiny`, "gpu": bytes or None}}."""
    out = {}
    for method in FLAGS.memory_methods:
        runs = {}
        for w in (width, tiny):
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
            if FLAGS.malloc_mmap_threshold:
                env["MALLOC_MMAP_THRESHOLD_"] = str(FLAGS.malloc_mmap_threshold)
            proc = subprocess.run(
                [sys.executable, __file__, f"--memory_child={method}", f"--width={w}",
                 f"--batch_size={FLAGS.batch_size}", f"--memory_epochs={FLAGS.memory_epochs}"],
                capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                raise RuntimeError(f"memory run of {method} at width {w} failed:\n{proc.stderr[-2000:]}")
            runs[w] = json.loads(proc.stdout.strip().splitlines()[-1])["memory"]
        out[method] = {"peak": runs[width]["peak_rss_bytes"], "tiny": runs[tiny]["peak_rss_bytes"],
                       "gpu": runs[width]["peak_gpu_bytes"], "state": runs[width]["state_bytes"],
                       "state_tiny": runs[tiny]["state_bytes"]}
    return out


def model_sizes(scenario):
    """[(method, network MiB as deployed, network MiB all-float32, engram masks MiB,
    task discriminant MiB for inference, its learning statistics MiB)]: the network from
    Larq's ModelProfile (binary kernels at 1 bit), the discriminant counted apart."""
    rows = []
    for method in ("engram_bnn", "bnn", "finetune"):
        model = methods.build(method, scenario, hidden=(FLAGS.width, FLAGS.width)).model
        profile = lq.models.ModelProfile(model)
        discriminant = getattr(model, "task_discriminant", None)
        network = [lp for lp, layer in zip(profile.layer_profiles, model.layers) if layer is not discriminant]
        masks = sum(int(np.prod(layer.engram_masks.shape)) for layer in getattr(model, "engram_layers", []))
        infer, learn = discriminant.memory_bits() if discriminant is not None else (0, 0)
        mib = 8 * 2**20
        rows.append((method, sum(lp.memory for lp in network) / mib,
                     sum(lp.fp_equivalent_memory for lp in network) / mib, masks * 4 / 2**20,
                     infer / mib, learn / mib))
    return rows


def main(argv):
    del argv
    if FLAGS.memory_child:
        return memory_child(FLAGS.memory_child)
    scenario = benchmarks.split_mnist("class", batch_size=FLAGS.batch_size)
    x, y = next(iter(scenario[0].train))
    gpus = tf.config.list_physical_devices("GPU")
    device = f"GPU: {gpus[0].name}" if gpus else "CPU"
    print(f"device: {device}; {os.cpu_count()} CPU cores; batch {FLAGS.batch_size}; data: {scenario.source}\n")
    report = {"device": device, "cpu_cores": os.cpu_count(), "batch_size": FLAGS.batch_size}

    print(f"1. training step time, ms (best of 3 blocks of {FLAGS.steps} steps), as ContinualTrainer runs it")
    widths = [int(w) for w in FLAGS.widths]
    times = {}
    for width in widths:
        row = {m: step_time(m, scenario, x, y, width) for m in STEP_METHODS}
        row["bnn (no XLA)"] = step_time("bnn", scenario, x, y, width, jit_compile=False)
        times[width] = row
    names = [*STEP_METHODS, "bnn (no XLA)"]
    print("   " + "width".ljust(8) + "".join(n.rjust(14) for n in names) + "   engram_bnn/bnn")
    for width, row in times.items():
        ratio = row["engram_bnn"] / row["bnn"]
        print("   " + str(width).ljust(8) + "".join(f"{1000 * row[n]:14.2f}" for n in names)
              + f"   {ratio:.2f} (vs bnn without XLA: {row['engram_bnn'] / row['bnn (no XLA)']:.2f})")
    report["step_seconds"] = {str(w): r for w, r in times.items()}
    if FLAGS.width in times:
        ratio = times[FLAGS.width]["engram_bnn"] / times[FLAGS.width]["bnn"]
        print(f"   engram_bnn / bnn at {FLAGS.width}: {ratio:.2f} (target <= 0.35: {'met' if ratio <= 0.35 else 'NOT met'})")

    width = FLAGS.width
    print(f"\n2. 'infer' evaluation of {int(x.shape[0])} examples vs stored engrams, {width}-{width}")
    infer, dense = infer_times(scenario, x, y, width)
    for k, seconds in enumerate(infer, 1):
        print(f"   {k:2d} engrams: {1000 * seconds:8.2f} ms  (x{seconds / dense:.2f} of one dense bnn forward)")
    print(f"   one dense bnn forward (XLA): {1000 * dense:.2f} ms; 5 engrams: x{infer[4] / dense:.2f} "
          f"(target <= 1.0: {'met' if infer[4] <= dense else 'NOT met'})" if len(infer) >= 5 else "")
    report["infer_seconds"], report["dense_forward_seconds"] = infer, dense

    print("\n3. epoch seconds (8,000 examples, batch 100; median of each task's epochs after its first)")
    mbnn_epoch, mbnn_all = trainer_epochs("mbnn", 1024)
    ratio = mbnn_epoch / FLAGS.reference_epoch_seconds
    print(f"   mbnn 1024-1024, ContinualTrainer: {mbnn_epoch:.3f} s = x{ratio:.2f} of the PyTorch reference's "
          f"{FLAGS.reference_epoch_seconds} s (target <= 0.6: {'met' if ratio <= 0.6 else 'NOT met'})")
    fits = {m: fit_epochs(m, width) for m in ("engram_bnn", "bnn")}
    print(f"   model.fit at {width}-{width}: engram_bnn {fits['engram_bnn'][0]:.3f} s, bnn {fits['bnn'][0]:.3f} s "
          f"(x{fits['engram_bnn'][0] / fits['bnn'][0]:.2f})")
    report["epoch_seconds"] = {"mbnn_trainer_1024": mbnn_all, "fit": {m: v[1] for m, v in fits.items()}}

    print(f"\n4. memory over Split MNIST (class), {width}-{width} minus 16-16, a fresh process per run, "
          f"{FLAGS.memory_epochs} epoch(s)/task")
    threshold = FLAGS.malloc_mmap_threshold
    print(f"   glibc MALLOC_MMAP_THRESHOLD_: {threshold if threshold else 'the default (dynamic)'}")
    peaks = memory_runs(width)
    model_memory = {m: p["peak"] - p["tiny"] for m, p in peaks.items()}
    state = {m: p["state"] - p["state_tiny"] for m, p in peaks.items()}

    def ratios(values, method):
        return ", ".join(f"x{values[method] / values[b]:.2f} of {b}"
                         for b in ("bnn", "ewc", "si", "finetune") if b in values and b != method)

    for method, p in peaks.items():
        gpu = "absent (no GPU)" if p["gpu"] is None else f"{p['gpu'] / 2**20:.0f} MiB"
        print(f"   {method:11s} model memory {model_memory[method] / 2**20:6.0f} MiB ({ratios(model_memory, method)}); "
              f"peak RSS {p['peak'] / 2**20:.0f} MiB, at 16-16 {p['tiny'] / 2**20:.0f} MiB; GPU peak {gpu}")
    total = {m: p["state"] for m, p in peaks.items()}
    print("   state kept (variables of the model, optimizer, slot cache and method callbacks), "
          f"{width}-{width} minus 16-16, and in all at {width}-{width}:")
    for method in peaks:
        print(f"   {method:11s} {state[method] / 2**20:6.1f} MiB ({ratios(state, method)}); "
              f"in all {total[method] / 2**20:6.1f} MiB ({ratios(total, method)})")
    baselines = [b for b in ("ewc", "si", "finetune") if b in peaks]
    if "engram_bnn" in peaks and baselines:
        def span(values):
            r = [values["engram_bnn"] / values[b] for b in baselines]
            return f"x{min(r):.2f}" if len(r) == 1 else f"x{min(r):.2f} to x{max(r):.2f}"
        whole = {m: p["peak"] for m, p in peaks.items()}
        gpu = {m: p["gpu"] for m, p in peaks.items() if p["gpu"]}
        print(f"   the paper's claim, engramBNN's peak RAM < 20 % (GPU < 5 %) of the full-precision baselines' "
              f"({', '.join(baselines)}): here model memory {span(model_memory)}, state {span(state)}, "
              f"whole-process peak RSS {span(whole)}"
              + (f", GPU peak {span(gpu)}" if len(gpu) == len(peaks) else "; no GPU peak measured"))
    report["memory"] = peaks
    report["malloc_mmap_threshold"] = threshold

    print("\n5. model size (Larq ModelProfile: binary kernels at 1 bit; the task discriminant counted apart)")
    sizes = model_sizes(scenario)
    for method, actual, fp32, masks, infer, learn in sizes:
        print(f"   {method:11s} network {actual:7.2f} MiB as deployed vs {fp32:7.2f} MiB all-float32 "
              f"(x{fp32 / actual:.1f})" + (f"; includes {masks:.2f} MiB of float32 engram masks" if masks else ""))
        if infer or learn:
            print(f"   {'':11s} + task discriminant {infer:.2f} MiB to infer (signs of R at 1 bit, float32 kernel "
                  f"and bias) + {learn:.2f} MiB of float32 statistics, needed only to learn further tasks")
    report["model_size_mib"] = {m: {"deployed": a, "float32": f, "engram_masks": k, "discriminant_infer": i,
                                    "discriminant_statistics": s_} for m, a, f, k, i, s_ in sizes}
    if FLAGS.output:
        with open(FLAGS.output, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    cli.run(main)
