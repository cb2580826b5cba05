"""Compare task-inference rules of an engram model on validation data only.

Trains `engram_bnn` once through a scenario built with `evaluate_on="validation"` (the
test split is never loaded), records at each task's end the engram's first-layer
pre-activations and the inputs of that task's training data, and then scores rules for
choosing an engram without a task id, on every task's validation data:

- `input_lda` (this package's default, `task_inference.InputDiscriminant`): streaming
  LDA over M random ReLU features of the inputs (or the raw inputs) of every
  (engram, class) group with one shared covariance, shrinkage λ; each `--lda` entry
  'M:λ' is one variant (M = 0: raw inputs);
- `engram_gaussian`: per engram, class-conditional Gaussians on its own first-layer
  pre-activations with the engram's own tied covariance (shrinkage λ from
  `--shrinkage`), score -min_c MD² / dim;
- `excitation`: the trainer's own "infer" evaluation with confidence="excitation";
- `..., output × discriminant^w`: the chosen engram predicts with the product of its
  posterior and the discriminant's over its classes (`EngramModel(lda_weight=w)`);
- `... alone`: the discriminant's own class prediction (its best group; no network),
  for reference;
- `... + a · max logit`: the engram networks' evidence added to the router's engram
  score, score_s = max_c g_{s,c}(x) + a max_{c of s} logit_s(x)_c (the maximum-logit
  out-of-distribution score of Hendrycks et al. 2022), one row per `--logit_weight` a;
- `... + b · engram_gaussian`: the router's score plus b times the engram's Gaussian
  score on its own first-layer pre-activations (a product of the two densities),
  one row per `--gaussian_weight` b;
- `... + w · open-set`: per task, a Larq BNN of an engram's size (rho x each width) trained
  as an open-set classifier: its task's classes plus one "other" class, whose examples
  are pseudo-negatives made from the task's own inputs (rotations by 90, 180 and 270
  degrees, the 7x7 patches shuffled, two inputs of different classes averaged; in the
  spirit of Kim et al. 2022 / CSI), so that its confidences compare across tasks; the
  router's score plus w times log p(not other) - log p(other), one row per
  `--open_set_weight` w (`open-set alone`: that score only). Independent networks stand
  in for the engrams, which are near-disjoint at the defaults (rho 0.2, beta 6).

The chosen engram predicts among its classes with its logits. Prints a table of task-
inference accuracy and ACC per rule and writes it as JSON.

    python experiments/task_inference_study.py --scenario=split_mnist --hidden=1024,1024 --epochs=5
"""
import json
import os
import sys

from absl import app, flags

import cli  # noqa: I001  (first: quiet TensorFlow start-up, binds tf.keras to Keras 2)

import numpy as np
import tensorflow as tf

from larq_engrams import benchmarks, methods
from larq_engrams.layers import engram_fraction_for
from larq_engrams.models import bnn
from larq_engrams.optimizers import Adam
from larq_engrams.callbacks.base import ContinualCallback
from larq_engrams.subnetwork import EngramSubnetwork
from larq_engrams.task_inference import InputDiscriminant
from larq_engrams.training import ContinualTrainer, write_atomically

FLAGS = flags.FLAGS
flags.DEFINE_enum("scenario", "split_mnist", ["split_mnist", "split_fashion_mnist", "permuted_mnist"], "Benchmark.")
flags.DEFINE_enum("setting", "class", ["class", "domain"], "Split benchmarks: class or domain incremental.")
flags.DEFINE_integer("num_tasks", 5, "Permuted MNIST: how many tasks.", lower_bound=2)
flags.DEFINE_list("hidden", ["1024", "1024"], "Hidden layer widths.")
flags.DEFINE_integer("epochs", 5, "Epochs per task.", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Seed (also of the validation split).")
flags.DEFINE_list("lda", ["2048:0.01", "1024:0.01", "0:0.1", "0:0.01"],
                  "input_lda variants 'M:λ' (M random features, 0 for the raw inputs).")
flags.DEFINE_list("shrinkage", ["0.1"], "engram_gaussian: shrinkage values λ.")
flags.DEFINE_list("lda_weight", ["0.2"], "input_lda: product-of-experts weights w to compare.")
flags.DEFINE_list("logit_weight", ["0.3", "1", "3", "10", "30"],
                  "input_lda + a * the engram network's max logit: the weights a to compare.")
flags.DEFINE_list("gaussian_weight", ["1", "3", "10", "30", "100", "300"],
                  "input_lda + b * engram_gaussian (first --lda variant, first --shrinkage): weights b.")
flags.DEFINE_list("open_set_weight", [],
                  "input_lda + w * an open-set network's score (first --lda variant): the weights w; "
                  "empty: the open-set networks are not trained.")
flags.DEFINE_integer("open_set_epochs", 5, "Epochs of each open-set network.", lower_bound=1)
flags.DEFINE_enum("source", "auto", list(benchmarks.SOURCES), "Data source.")
flags.DEFINE_string("output", None, "JSON output path (default: runs/task_inference/<name>.json).")


def _arrays(dataset):
    xs, ys = [], []
    for x, y in dataset:
        xs.append((x[0] if isinstance(x, tuple) else x).numpy())
        ys.append(y.numpy())
    return np.concatenate(xs).reshape(sum(len(y) for y in ys), -1).astype(np.float64), np.concatenate(ys)


def _engram_outputs(model, x, task):
    """(first-layer pre-activations, logits) of engram `task` on inputs x."""
    sub = EngramSubnetwork(model, tf.constant(task, tf.int32))
    z0, logits = [], []
    for start in range(0, len(x), 2000):
        batch = tf.constant(x[start:start + 2000], tf.float32)
        layer, units = model.engram_layers[0], sub.units[0]
        _, z = layer.call_engram(batch, units, sub.weights[:3], training=False)
        z0.append(z.numpy())
        logits.append(sub(batch).numpy())
    return np.concatenate(z0).astype(np.float64), np.concatenate(logits)


def _shrunk_precision(residuals, shrinkage):
    cov = residuals.T @ residuals / len(residuals)
    d = cov.shape[0]
    return np.linalg.inv((1 - shrinkage) * cov + shrinkage * np.trace(cov) / d * np.eye(d))


def _log_softmax(v):
    v = v - v.max(1, keepdims=True)
    return v - np.log(np.exp(v).sum(1, keepdims=True))


def _class_il_accuracy(choices, logits, labels, classes, groups=None, weight=0.0):
    """Per task: (task-inference accuracy, accuracy) when engram choices[k] predicts,
    with its logits, or (with `groups`, the discriminant's (n, tasks, classes) scores)
    with the product log_softmax(logits) + weight * log_softmax(g) over its classes."""
    out = []
    for k, chosen in enumerate(choices):
        prediction = np.empty(len(chosen), int)
        for s, cs in enumerate(classes):
            sel = chosen == s
            score = _log_softmax(logits[k][s][sel][:, cs].astype(np.float64))
            if groups is not None:
                score = score + weight * _log_softmax(groups[k][sel][:, s, cs].astype(np.float64))
            prediction[sel] = cs[score.argmax(1)]
        out.append((np.mean(chosen == k), np.mean(prediction == labels[k])))
    return np.array(out)


def _pseudo_negatives(x, y, rng, side=28, patch=7):
    """As many "other" inputs as `x` (n, side*side): a quarter each rotated by 90, 180 and
    270 degrees, an eighth with its patch x patch tiles shuffled, an eighth averaged with
    an input of another class of the task."""
    images = x.reshape(-1, side, side)
    kind = rng.integers(0, 4, len(x))
    out = np.empty_like(images)
    for k in (1, 2, 3):
        out[kind == k - 1] = np.rot90(images[kind == k - 1], k, axes=(1, 2))
    tiles = side // patch
    shuffled = images[kind == 3].reshape(-1, tiles, patch, tiles, patch).transpose(0, 1, 3, 2, 4)
    shuffled = shuffled.reshape(len(shuffled), tiles * tiles, patch, patch)
    for i in range(len(shuffled)):
        shuffled[i] = shuffled[i][rng.permutation(tiles * tiles)]
    out[kind == 3] = shuffled.reshape(-1, tiles, tiles, patch, patch).transpose(0, 1, 3, 2, 4).reshape(-1, side, side)
    mixed = np.flatnonzero(kind == 3)[: int(np.sum(kind == 3)) // 2]
    partners = np.array([rng.choice(np.flatnonzero(y != y[i])) for i in mixed], int)
    out[mixed] = 0.5 * (images[mixed] + images[partners])
    return out.reshape(len(x), -1)


def _open_set_scores(train, val, classes, hidden, fraction, epochs, seed):
    """Per validation task k: (n, tasks) scores log p_s(not other | x) - log p_s(other | x)
    of each task's open-set network (see the module docstring)."""
    rng = np.random.default_rng(seed)
    scores = [[] for _ in val]
    for s, (x, y, _) in enumerate(train):
        local = np.searchsorted(classes[s], y)
        negatives = _pseudo_negatives(x, y, rng)
        inputs = np.concatenate([x, negatives]).astype(np.float32)
        targets = np.concatenate([local, np.full(len(x), len(classes[s]))])
        tf.keras.utils.set_random_seed(seed + s)
        widths = tuple(max(1, round(fraction * h)) for h in hidden)
        network = bnn((x.shape[1],), len(classes[s]) + 1, widths)
        network.compile(Adam(0.005), tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        network.fit(inputs, targets, batch_size=100, epochs=epochs, shuffle=True, verbose=0)
        for k, (xv, _) in enumerate(val):
            z = network.predict(xv.astype(np.float32), batch_size=2000, verbose=0).astype(np.float64)
            real = np.log(np.exp(z[:, :-1] - z.max(1, keepdims=True)).sum(1)) + z.max(1)
            scores[k].append(real - z[:, -1])
    return [np.stack(rows, 1) for rows in scores]


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.scenario == "permuted_mnist":
        scenario = benchmarks.permuted_mnist(num_tasks=FLAGS.num_tasks, seed=FLAGS.seed, source=FLAGS.source,
                                             evaluate_on="validation")
    else:
        make = getattr(benchmarks, FLAGS.scenario)
        scenario = make(FLAGS.setting, seed=FLAGS.seed, source=FLAGS.source, evaluate_on="validation")
    hidden = tuple(int(h) for h in FLAGS.hidden)
    name = f"{scenario.name}-{scenario.setting}-{'-'.join(map(str, hidden))}-{FLAGS.epochs}ep-seed{FLAGS.seed}"
    setup = methods.build("engram_bnn", scenario, methods.HyperParameters(hidden=hidden, seed=FLAGS.seed))
    setup.model.confidence = "excitation"  # the trainer's own evaluation gives this rule
    T = scenario.num_tasks
    train = {}

    class RecordAtTaskEnd(ContinualCallback):  # statistics as they are when the task ends
        def on_task_end(self, task, logs=None):
            x, y = _arrays(scenario[task].train)
            train[task] = (x, y, _engram_outputs(self.model, x, task)[0])

    result = ContinualTrainer(setup.model, setup.optimizer, epochs=FLAGS.epochs, verbose=0, seed=FLAGS.seed,
                              callbacks=[RecordAtTaskEnd()]).fit(setup.scenario)
    model = setup.model
    val = [_arrays(task.test) for task in scenario]
    labels = [y for _, y in val]
    classes = [np.unique(train[s][1]) for s in range(T)]
    outputs = [[_engram_outputs(model, x, s) for s in range(T)] for x, _ in val]
    logits = [[o[1] for o in row] for row in outputs]
    rows = {"excitation": (np.mean(result.task_inference), result.metrics["acc"])}

    # The first --lda variant's max_c g_{s,c}, (n, tasks) per validation task, and its g_{s,c}.
    lda_engram_scores = first_scores = None
    for variant in FLAGS.lda:
        features, shrinkage = variant.split(":")
        features, shrinkage = int(features) or None, float(shrinkage)
        discriminant = InputDiscriminant(T, scenario.num_classes, features, shrinkage, seed=FLAGS.seed)
        discriminant.build((None, val[0][0].shape[1]))
        for s in range(T):
            x, y, _ = train[s]
            for start in range(0, len(x), 1000):
                discriminant.observe(x[start:start + 1000], y[start:start + 1000], s)
        discriminant.refresh()
        label = f"input_lda M={features or 'raw inputs'} λ={shrinkage:g}"
        # group scores g_{s,c}(x): (n, tasks, classes)
        scores = [(tf.einsum("bd,tcd->btc", discriminant.transform(x), discriminant.kernel)
                   + discriminant.bias).numpy() for x, _ in val]
        choices = [g.max(-1).argmax(-1) for g in scores]
        rows[label] = tuple(_class_il_accuracy(choices, logits, labels, classes).mean(0))
        for weight in map(float, FLAGS.lda_weight):
            rows[f"{label}, output × discriminant^{weight:g}"] = tuple(
                _class_il_accuracy(choices, logits, labels, classes, scores, weight).mean(0))
        alone = np.mean([np.mean(g.reshape(len(g), -1).argmax(1) % scenario.num_classes == y)
                         for g, y in zip(scores, labels)])
        rows[label + " alone (no network)"] = (float("nan"), alone)
        router = [g.max(-1) for g in scores]
        if lda_engram_scores is None:
            lda_engram_scores, first_scores = router, scores
        for weight in map(float, FLAGS.logit_weight):
            evidence = [np.stack([logits[k][s][:, classes[s]].max(1) for s in range(T)], 1) for k in range(T)]
            choices = [(router[k] + weight * evidence[k]).argmax(-1) for k in range(T)]
            rows[f"{label} + {weight:g} · max logit, output × discriminant^{FLAGS.lda_weight[0]}"] = tuple(
                _class_il_accuracy(choices, logits, labels, classes, scores, float(FLAGS.lda_weight[0])).mean(0))

    if FLAGS.open_set_weight and lda_engram_scores is not None:
        fraction = engram_fraction_for(T)
        open_set = _open_set_scores([train[s] for s in range(T)], val, classes, hidden, fraction,
                                    FLAGS.open_set_epochs, FLAGS.seed)
        choices = [o.argmax(-1) for o in open_set]
        rows["open-set alone"] = tuple(_class_il_accuracy(choices, logits, labels, classes).mean(0))
        for weight in map(float, FLAGS.open_set_weight):
            choices = [(lda_engram_scores[k] + weight * open_set[k]).argmax(-1) for k in range(T)]
            rows[f"input_lda {FLAGS.lda[0]} + {weight:g} · open-set, output × discriminant^{FLAGS.lda_weight[0]}"] = \
                tuple(_class_il_accuracy(choices, logits, labels, classes, first_scores,
                                         float(FLAGS.lda_weight[0])).mean(0))

    for shrinkage in map(float, FLAGS.shrinkage):
        # engram_gaussian: each engram's own space and covariance.
        models = []
        for s in range(T):
            _, y, z = train[s]
            mus = np.stack([z[y == c].mean(0) for c in classes[s]])
            resid = z - mus[np.searchsorted(classes[s], y)]
            models.append((mus, _shrunk_precision(resid, shrinkage)))

        def engram_score(k, s):
            z, (mus, P) = outputs[k][s][0], models[s]
            d2 = np.stack([np.einsum("nd,de,ne->n", z - mu, P, z - mu) for mu in mus], 1)
            return -d2.min(1) / z.shape[1]

        gaussian = [np.stack([engram_score(k, s) for s in range(T)], 1) for k in range(T)]
        choices = [g.argmax(-1) for g in gaussian]
        rows[f"engram_gaussian λ={shrinkage:g}"] = tuple(_class_il_accuracy(choices, logits, labels, classes).mean(0))
        if shrinkage == float(FLAGS.shrinkage[0]) and lda_engram_scores is not None:
            for weight in map(float, FLAGS.gaussian_weight):
                choices = [(lda_engram_scores[k] + weight * gaussian[k]).argmax(-1) for k in range(T)]
                rows[f"input_lda {FLAGS.lda[0]} + {weight:g} · engram_gaussian λ={shrinkage:g}"] = tuple(
                    _class_il_accuracy(choices, logits, labels, classes).mean(0))

    print(f"{name}  (validation data: {scenario.source})")
    print("| rule | task inference | ACC |\n|---|---|---|")
    for rule, (ti, acc) in rows.items():
        print(f"| {rule} | {'—' if np.isnan(ti) else f'{100 * ti:.1f} %'} | {100 * acc:.1f} % |")
    output = FLAGS.output or os.path.join("runs", "task_inference", name + ".json")
    os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
    write_atomically(output, json.dumps({
        "name": name, "source": scenario.source, "command": " ".join(sys.argv),
        "commit": result.environment.get("git_commit"),
        "rules": {rule: {"task_inference": None if np.isnan(ti) else float(ti), "acc": float(acc)}
                  for rule, (ti, acc) in rows.items()}}, indent=1))


if __name__ == "__main__":
    cli.run(main)
