"""Export a trained binarized network as a bit-packed file and check it against Keras.

Loads a saved `.keras` model (`--model`), or trains one on the scenario first (the
method, widths and epochs below; the engram BNN at the paper's 784-2048-2048-10 with 5
engrams by default), then:

1. writes it with `larq_engrams.export.save_packed` and loads it with the NumPy-only
   `larq_engrams.runtime`;
2. checks agreement on the scenario's whole test set: argmax in "infer" and in "task"
   mode, the engram chosen per sample, and where each disagreement comes from (first-
   layer units whose float sum sits at its BatchNorm threshold);
3. measures, in this one run: the artifact's size against the `.keras` file and a
   float32 MLP of the same widths; the peak RSS of a process that loads the artifact and
   predicts against one that loads the Keras model and predicts; latency at batch 1
   and batch 100 of the runtime, Keras' `predict` and direct call, and the float32 MLP
   converted to TensorFlow Lite.

A shared machine makes single timings and peak RSS move from run to run, so every ratio
is measured in `--rounds` alternating rounds (each round times every contender, in turn)
and reported as the median over rounds with its range (min-max): a target is met when
the median meets it, and the range says how far one run may stray.

    python experiments/export.py                      # trains engram_bnn 2048-2048 and measures: ~3 minutes on 2 cores
    python experiments/export.py --model=m.keras      # a model you saved
    taskset -c 0 python experiments/export.py --output=results/export   # the committed table: one core

Prints the ratios and writes `export.json` and `export.md` to `--output`.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import warnings

import numpy as np
from absl import flags

import cli  # noqa: I001  (first: quiet TensorFlow start-up, binds tf.keras to Keras 2)
import tensorflow as tf

from larq_engrams import export, methods, models, runtime
from larq_engrams.experiment import ExperimentConfig, make_scenario
from larq_engrams.results import environment
from larq_engrams.training import ContinualTrainer

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "A saved .keras model to export (default: train one with the flags below).")
flags.DEFINE_enum("scenario", "split_mnist", ["split_mnist", "split_fashion_mnist", "permuted_mnist"], "Benchmark.")
flags.DEFINE_enum("setting", "class", ["class", "domain", "task"], "Split benchmarks: the setting.")
flags.DEFINE_enum("method", "engram_bnn", ["engram_bnn", "engram", "bnn", "mbnn"], "What to train without --model.")
flags.DEFINE_list("hidden", ["2048", "2048"], "Hidden widths of the trained model.")
flags.DEFINE_integer("epochs", 1, "Epochs per task of the trained model.", lower_bound=1)
flags.DEFINE_integer("repeats", 20, "Timed calls per measurement (the best is kept).", lower_bound=1)
flags.DEFINE_integer("rounds", 5, "Alternating measurement rounds; ratios are their median.", lower_bound=1)
flags.DEFINE_string("output", "runs/export", "Where the artifact, the .keras file and the report go.")
flags.DEFINE_enum("router_features", None, ["dense", "conv", "auto"], "The trained model's router features "
                  "(default: the package's).")
flags.DEFINE_bool("device_learning", True, "Also train on all tasks but the last, learn the last one's classes "
                  "in a process without TensorFlow, and compare with slda_rf trained in TensorFlow.")
flags.DEFINE_bool("c_export", True, "Also write the C99 export (save_c), build it with cc and check it against "
                  "the runtime; with arm-none-eabi-gcc, report Cortex-M4 flash and RAM at two widths.")

_MEASURE = """
import json, sys, numpy as np
x = np.load(sys.argv[2])
if sys.argv[1] == "runtime":
    from larq_engrams import runtime
    net = runtime.load(sys.argv[3])
    out = net.predict(x)
else:
    import larq_engrams, tensorflow as tf
    model = tf.keras.models.load_model(sys.argv[3])
    out = model.predict(x, batch_size=100, verbose=0)
# VmHWM: this process's own peak (ru_maxrss would include the parent's, from before exec).
peak = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"peak_rss_bytes": peak, "tensorflow_loaded": "tensorflow" in sys.modules}))
"""


def _best_seconds(fn, repeats):
    fn()  # warm-up (tracing, caches)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def _rounds(measure, rounds):
    """`measure()` (a dict of numbers) `rounds` times; per key the median, min and max."""
    samples = [measure() for _ in range(rounds)]
    return {key: {"median": float(np.median([s[key] for s in samples])), "min": float(min(s[key] for s in samples)),
                  "max": float(max(s[key] for s in samples))} for key in samples[0]}


def _peak_rss(kind, x_path, model_path):
    proc = subprocess.run([sys.executable, "-c", _MEASURE, kind, x_path, model_path], capture_output=True,
                          text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if proc.returncode:
        raise RuntimeError(f"the {kind} process failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _hyperparameters(**changes):
    hp = methods.HyperParameters(hidden=tuple(int(h) for h in FLAGS.hidden), **changes)
    return hp if FLAGS.router_features is None else hp.replace(router_features=FLAGS.router_features)


def _trained_model(scenario, tasks=None):
    """The method built for `scenario` (its engram bank sized for every task), trained
    on its first `tasks` tasks (default: all)."""
    setup = methods.build(FLAGS.method, scenario, _hyperparameters())
    trained = setup.scenario if tasks is None else setup.scenario.take(tasks)
    ContinualTrainer(setup.model, setup.optimizer, epochs=FLAGS.epochs, verbose=1, seed=0).fit(trained)
    return setup.model


_DEVICE = """
import json, sys, numpy as np
from larq_engrams import runtime
net = runtime.load(sys.argv[1])
x, y, x_test = np.load(sys.argv[2]), np.load(sys.argv[3]), np.load(sys.argv[4])
task = net.add_task()
for start in range(0, len(x), 100):
    net.learn(x[start:start + 100], y[start:start + 100], task)
np.save(sys.argv[5], net.predict(x_test).argmax(-1))
print(json.dumps({"learning_bytes": net.learning_bytes(),
                  "tensorflow_loaded": any(m.split(".")[0] == "tensorflow" for m in sys.modules)}))
"""


def _device_learning(scenario, folder):
    """Trains on every task but the last, learns the last one's classes on the device
    (a process without TensorFlow: the router alone), and scores its test examples
    against slda_rf trained in TensorFlow on every task with the same features."""
    last = scenario.tasks[-1]
    model = _trained_model(scenario, tasks=scenario.num_tasks - 1)
    model.set_inference("infer")
    path = os.path.join(folder, "learning.npz")
    export.save_packed(model, path, learning=True)
    (x_new, y_new), (x_test, y_test) = (
        [np.concatenate(a) for a in zip(*[(b[0].numpy(), b[1].numpy()) for b in data])]
        for data in (last.train, last.test))
    files = [os.path.join(folder, f"{name}.npy") for name in ("x", "y", "x_test", "out")]
    for f, a in zip(files, (x_new, y_new, x_test)):
        np.save(f, a)
    proc = subprocess.run([sys.executable, "-c", _DEVICE, path, *files], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if proc.returncode:
        raise RuntimeError(f"the device process failed: {proc.stderr[-2000:]}")
    device = json.loads(proc.stdout.strip().splitlines()[-1])
    device_accuracy = float((np.load(files[3]) == y_test).mean())
    slda = methods.build("slda_rf", scenario, _hyperparameters())
    ContinualTrainer(slda.model, slda.optimizer, epochs=1, verbose=0, seed=0).fit(slda.scenario)
    slda_accuracy = float((slda.model.predict(x_test, verbose=0).argmax(-1) == y_test).mean())
    return {"task": last.task_id, "classes": list(last.classes), "device_accuracy": device_accuracy,
            "slda_rf_accuracy": slda_accuracy, **device}


_C_MAIN = r"""
#include <stdio.h>
#include "engram_model.h"
int main(int argc, char **argv) {
    if (argc < 2) return 2;
    FILE *in = fopen(argv[1], "rb");
    float x[LE_INPUTS], scores[LE_CLASSES];
    int32_t task;
    while (fread(x, sizeof(float), LE_INPUTS, in) == LE_INPUTS) {
        int32_t label = le_infer(x, scores, &task);
        printf("%d %d\n", label, task);
    }
    return 0;
}
"""


def _c_export(model, net, x, folder):
    """save_c, built with cc, run on every test example: its class and engram against
    the runtime's."""
    source = os.path.join(folder, "c")
    sizes = export.save_c(model, source)
    with open(os.path.join(source, "main.c"), "w") as f:
        f.write(_C_MAIN)
    binary = os.path.join(source, "predict")
    subprocess.run(["cc", "-std=c99", "-O2", "-o", binary, os.path.join(source, "main.c"),
                    os.path.join(source, "engram_model.c"), "-lm"], check=True, capture_output=True)
    x.astype(np.float32).tofile(os.path.join(folder, "x.bin"))
    started = time.perf_counter()
    out = subprocess.run([binary, os.path.join(folder, "x.bin")], check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    rows = np.array([line.split() for line in out.stdout.splitlines()], np.int64)
    return {"class_agreement": float((rows[:, 0] == net.predict(x).argmax(-1)).mean()),
            "engram_agreement": float((rows[:, 1] == net.infer_tasks(x)).mean()),
            "examples": len(rows), "host_seconds_per_example": seconds / max(len(rows), 1), **sizes}


def _cortex_m4_sizes(scenario, folder):
    """Flash and RAM of the C export for a Cortex-M4 (arm-none-eabi-gcc, -Os, hard float)
    at 784-512-512-10 and 784-2048-2048-10 with 5 engrams (allocated, not trained: the
    sizes do not depend on the weights). None where the cross-compiler is missing."""
    if shutil.which("arm-none-eabi-gcc") is None:
        return None
    sizes = {}
    for hidden in ((512, 512), (2048, 2048)):
        setup = methods.build("engram_bnn", scenario, _hyperparameters().replace(hidden=hidden))
        for t in range(scenario.num_tasks):
            setup.model.begin_task(t)
        source = os.path.join(folder, f"m4_{hidden[0]}")
        export.save_c(setup.model, source)
        obj = os.path.join(source, "engram_model.o")
        subprocess.run(["arm-none-eabi-gcc", "-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16",
                        "-std=c99", "-Os", "-c", "-o", obj, os.path.join(source, "engram_model.c")], check=True,
                       capture_output=True)
        out = subprocess.run(["arm-none-eabi-size", obj], check=True, capture_output=True, text=True).stdout
        text, data, bss = (int(v) for v in out.splitlines()[1].split()[:3])
        sizes["-".join(map(str, hidden))] = {"flash_bytes": text + data, "ram_bytes": data + bss}
    return sizes


def _float32_mlp(input_shape, num_classes, hidden, folder):
    """The float32 MLP of the same widths, saved as .keras and converted to TensorFlow
    Lite (what an edge engineer would otherwise ship; untrained: only its size and
    speed are measured). Returns the two paths."""
    mlp = models.mlp(input_shape, num_classes, hidden=hidden)
    keras_path, tflite_path = os.path.join(folder, "mlp.keras"), os.path.join(folder, "mlp.tflite")
    mlp.save(keras_path)
    with open(tflite_path, "wb") as f:
        f.write(tf.lite.TFLiteConverter.from_keras_model(mlp).convert())
    return keras_path, tflite_path


def main(argv):
    del argv
    os.makedirs(FLAGS.output, exist_ok=True)
    setting = FLAGS.setting if FLAGS.scenario.startswith("split") else "domain"
    config = ExperimentConfig(scenario=FLAGS.scenario, setting=setting, num_tasks=5 if FLAGS.scenario ==
                              "permuted_mnist" else None)
    scenario = make_scenario(config, seed=0)
    keras_path = os.path.join(FLAGS.output, "model.keras")
    if FLAGS.model:
        model = tf.keras.models.load_model(FLAGS.model)
        keras_path = FLAGS.model
    else:
        model = _trained_model(scenario)
        model.save(keras_path)
    engram = hasattr(model, "engram_layers")
    if engram:
        model.set_inference("infer")
        model.save(keras_path)  # saved in "infer" mode: the TensorFlow process below predicts as the runtime
    packed_path = os.path.join(FLAGS.output, "model.npz")
    export.save_packed(model, packed_path)
    net = runtime.load(packed_path)

    # Agreement on the whole test set.
    xs, ids = [], []
    for task in scenario:
        for x, _ in task.test:
            xs.append((x[0] if isinstance(x, tuple) else x).numpy())
            ids.append(np.full(len(xs[-1]), task.task_id, np.int32))
    x, ids = np.concatenate(xs), np.concatenate(ids)
    report = {"model": FLAGS.model or f"{FLAGS.method} {'-'.join(FLAGS.hidden)}, {FLAGS.epochs} epoch(s) per task",
              "scenario": f"{scenario.name} {scenario.setting}-IL", "source": scenario.source, "test_examples": len(x)}
    keras_scores = model.predict(x, batch_size=100, verbose=0)
    agreement = {"argmax": float((net.predict(x).argmax(-1) == keras_scores.argmax(-1)).mean())}
    if engram:
        keras_tasks = model.infer_tasks(x).numpy()
        agreement["engram_choice"] = float((net.infer_tasks(x) == keras_tasks).mean())
        task_agree = []
        for t in model.allocated_tasks:
            rows = ids == t
            keras_task = model((x[rows], ids[rows]), training=False).numpy().argmax(-1)
            task_agree.append(float((net.predict(x[rows], task=t).argmax(-1) == keras_task).mean()))
        agreement["task_mode_argmax"] = float(np.mean(task_agree))
        # Where disagreements come from: first-layer units whose sign differs.
        first = model.engram_layers[0]
        keras_first = first(model.flatten(x), training=False, task=ids).numpy()
        ours_first = np.concatenate([net.hidden_outputs(x[ids == t], task=t)[0] for t in model.allocated_tasks])
        order = np.concatenate([np.flatnonzero(ids == t) for t in model.allocated_tasks])
        flips = (ours_first != keras_first[order]).sum(axis=1)
        agreement["first_layer_unit_flips"] = int(flips.sum())
        agreement["examples_with_a_first_layer_flip"] = int((flips > 0).sum())
    report["agreement"] = agreement

    # Sizes.
    with tempfile.TemporaryDirectory() as folder:
        mlp_path, tflite_path = _float32_mlp(scenario.input_shape, scenario.num_classes, net.manifest["hidden"],
                                             folder)
        sizes = {"packed": os.path.getsize(packed_path), "keras": os.path.getsize(keras_path),
                 "mlp_keras": os.path.getsize(mlp_path), "mlp_tflite": os.path.getsize(tflite_path)}
        with warnings.catch_warnings():  # its deprecation notice: it is what this TensorFlow ships
            warnings.simplefilter("ignore")
            interpreter = tf.lite.Interpreter(model_path=tflite_path)
        x_path = os.path.join(folder, "x.npy")
        np.save(x_path, x[:100])

        def one_memory_round():
            runtime_rss = _peak_rss("runtime", x_path, packed_path)
            tensorflow_rss = _peak_rss("keras", x_path, keras_path)
            assert not runtime_rss["tensorflow_loaded"] and tensorflow_rss["tensorflow_loaded"]
            return {"runtime": runtime_rss["peak_rss_bytes"], "tensorflow": tensorflow_rss["peak_rss_bytes"],
                    "ratio": runtime_rss["peak_rss_bytes"] / tensorflow_rss["peak_rss_bytes"]}

        memory = _rounds(one_memory_round, FLAGS.rounds)

        def tflite(batch):
            inputs = interpreter.get_input_details()[0]
            interpreter.resize_tensor_input(inputs["index"], [len(batch), *batch.shape[1:]])
            interpreter.allocate_tensors()
            interpreter.set_tensor(inputs["index"], batch)
            interpreter.invoke()
            return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])

        net_numpy = runtime.load(packed_path, kernels="numpy")
        contenders = {
            "runtime": lambda xb: net.predict(xb),
            "runtime_numpy": lambda xb: net_numpy.predict(xb),
            "keras_direct_call": lambda xb: model(xb, training=False),
            "keras_predict": lambda xb: model.predict(xb, batch_size=100, verbose=0),
            "mlp_tflite": tflite,
        }
        batches = {b: x[:b].astype(np.float32) for b in (1, 100)}

        def one_latency_round():
            seconds = {(b, name): _best_seconds(lambda: fn(xb), FLAGS.repeats)
                       for b, xb in batches.items() for name, fn in contenders.items()}
            out = {f"batch_{b}/{name}": t for (b, name), t in seconds.items()}
            for name in ("keras_direct_call", "mlp_tflite", "runtime_numpy"):
                out[f"batch_1_latency_vs_{name}"] = seconds[1, "runtime"] / seconds[1, name]
            for name in ("keras_direct_call", "keras_predict", "mlp_tflite", "runtime_numpy"):
                out[f"batch_100_throughput_vs_{name}"] = seconds[100, name] / seconds[100, "runtime"]
            return out

        timed = _rounds(one_latency_round, FLAGS.rounds)
        if FLAGS.c_export and engram and net.has_router and shutil.which("cc"):
            report["c_export"] = _c_export(model, net, x, folder)
            report["cortex_m4"] = _cortex_m4_sizes(scenario, folder)
        if FLAGS.device_learning and engram and not FLAGS.model:
            report["device_learning"] = _device_learning(scenario, folder)
    latency = {f"batch_{b}": {name: timed[f"batch_{b}/{name}"]["median"] for name in contenders} for b in batches}
    report.update(sizes_bytes=sizes, memory=memory, latency_seconds=latency)
    report["ratio_ranges"] = {"runtime_peak_rss_vs_tensorflow_process": memory["ratio"],
                              **{k: v for k, v in timed.items() if "_vs_" in k}}
    report["ratios"] = {
        "artifact_vs_keras_file": sizes["packed"] / sizes["keras"],
        "artifact_vs_float32_mlp_file": sizes["packed"] / sizes["mlp_keras"],
        **{k: v["median"] for k, v in report["ratio_ranges"].items()},
    }
    report["command"] = " ".join(sys.argv)
    report["environment"] = environment()
    # The speed targets are for one core: run under `taskset -c 0` (every thread inherits it).
    report["cores_used"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with open(os.path.join(FLAGS.output, "export.json"), "w") as f:
        json.dump(report, f, indent=1)
    ratios, ranges = report["ratios"], report["ratio_ranges"]

    def ranged(key, digits):
        r = ranges[key]
        return f"{r['median']:.{digits}f} ({r['min']:.{digits}f}-{r['max']:.{digits}f})"

    cores = f"{report['cores_used']} core{'s' if report['cores_used'] > 1 else ''}"
    targets = [  # (what, measured, target, met)
        ("artifact size", f"{sizes['packed'] / 2**20:.2f} MiB", "<= 2 MiB", sizes["packed"] <= 2 * 2**20),
        ("peak RSS, runtime process / TensorFlow process", ranged("runtime_peak_rss_vs_tensorflow_process", 3),
         "<= 0.10", ratios["runtime_peak_rss_vs_tensorflow_process"] <= 0.10),
        ("batch-1 latency / Keras direct call", ranged("batch_1_latency_vs_keras_direct_call", 3), "<= 0.2",
         ratios["batch_1_latency_vs_keras_direct_call"] <= 0.2),
        ("batch-100 throughput / Keras direct call", ranged("batch_100_throughput_vs_keras_direct_call", 2),
         ">= 1", ratios["batch_100_throughput_vs_keras_direct_call"] >= 1),
        ("argmax agreement with Keras (test set)", f"{100 * agreement['argmax']:.2f} %", ">= 99.9 %",
         agreement["argmax"] >= 0.999),
        (f"batch-1 latency / float32 MLP in TensorFlow Lite ({cores})", ranged("batch_1_latency_vs_mlp_tflite", 2),
         "<= 0.25", ratios["batch_1_latency_vs_mlp_tflite"] <= 0.25),
        (f"batch-100 throughput / float32 MLP in TensorFlow Lite ({cores})",
         ranged("batch_100_throughput_vs_mlp_tflite", 2), ">= 4", ratios["batch_100_throughput_vs_mlp_tflite"] >= 4),
    ]
    if "c_export" in report:
        c = report["c_export"]
        targets.append(("C export = runtime (class and engram, every test example)",
                        f"{100 * c['class_agreement']:.2f} / {100 * c['engram_agreement']:.2f} %", "100 %",
                        c["class_agreement"] == 1.0 and c["engram_agreement"] == 1.0))
    if "device_learning" in report:
        d = report["device_learning"]
        targets.append((f"classes {d['classes']} learned on the device (no TensorFlow) / slda_rf in TensorFlow",
                        f"{100 * d['device_accuracy']:.1f} / {100 * d['slda_rf_accuracy']:.1f} %", "within 1 point",
                        abs(d["device_accuracy"] - d["slda_rf_accuracy"]) <= 0.01 and not d["tensorflow_loaded"]))
    lines = [f"Export of {report['model']} on {report['scenario']} ({report['source']}, {len(x)} test examples)", "",
             f"Ratios: the median of {FLAGS.rounds} alternating rounds (min-max across rounds in brackets); a "
             "target is met when the median meets it.", "",
             "| ratio or size (this run) | measured | target | met |", "|---|---|---|---|"]
    lines += [f"| {what} | {value} | {target} | {'—' if met is None else 'yes' if met else 'no'} |"
              for what, value, target, met in targets]
    lines += ["", "| measure | value |", "|---|---|"]
    lines += [f"| agreement: {k} | {100 * v:.2f} % |" if isinstance(v, float) else f"| agreement: {k} | {v} |"
              for k, v in agreement.items()]
    lines += [f"| size: {k} | {v / 2**20:.2f} MiB |" for k, v in sizes.items()]
    lines += [f"| peak RSS: {k} process (median) | {memory[k]['median'] / 2**20:.0f} MiB |"
              for k in ("runtime", "tensorflow")]
    lines += ["| runtime kernels | c (XNOR-popcount after the first layer; the first layer and the router's features "
              "as sign-selected sums of the nonzero inputs) |" if net.kernels == "c"
              else "| runtime kernels | numpy (+-1 float products; no C kernels built) |"]
    if "c_export" in report:
        c = report["c_export"]
        lines += [f"| C export: const arrays | {c['const_bytes'] / 2**20:.2f} MiB |",
                  f"| C export: static buffers | {c['buffer_bytes']} bytes |",
                  f"| C export: host, per example (one core, -O2, \"infer\") | {1000 * c['host_seconds_per_example']:.3f} ms |"]
    for width, size in (report.get("cortex_m4") or {}).items():
        lines += [f"| Cortex-M4 (arm-none-eabi-gcc -Os), {width}, 5 engrams: flash / RAM | "
                  f"{size['flash_bytes'] / 2**10:.0f} KiB / {size['ram_bytes'] / 2**10:.1f} KiB |"]
    if "device_learning" in report:
        d = report["device_learning"]
        lines += [f"| device learning: bytes kept to learn (router statistics) | {d['learning_bytes'] / 2**20:.2f} MiB |"]
    lines += [f"| latency {b}: {k} | {1000 * s:.3f} ms |" for b, row in latency.items() for k, s in row.items()]
    lines += [f"| ratio: {k} | {v:.3f} |" for k, v in ratios.items()]
    env = report["environment"]
    lines += ["", f"Command: `{report['command']}`, at commit {env['git_commit']} "
              f"({', '.join(env['git_modified'] or []) or 'no'} uncommitted edits); {env['processor']}, "
              f"{report['cores_used']} of {env['cpu_count']} CPU cores used, device {env['device']}, TensorFlow {env['tensorflow']}, NumPy "
              f"{env['numpy']}. Latency: per round the best of {FLAGS.repeats} calls after a warm-up; the median over "
              f"{FLAGS.rounds} rounds."]
    with open(os.path.join(FLAGS.output, "export.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    cli.run(main)
