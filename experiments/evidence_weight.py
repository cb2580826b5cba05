"""How much the router's class evidence should weigh in engram_bnn's output: the
product-of-experts weight w (`EngramModel(lda_weight=w)`), chosen on validation data.

In "infer" mode the chosen engram s* answers with

    log_softmax(network_{s*}(x))_c + w log_softmax_{c in s*}(evidence_{s*,c}(x))

(docs/method.md, section 3). w only changes inference, so each scenario and seed trains
engram_bnn once, with the package's defaults and the paper grid's epochs and learning
rate, on the training data less a validation split, and then scores the final model on
every task's validation data for each w in --weights; w = 0 is the network alone, and
the row "router" the router's class evidence alone (`InputDiscriminant.predict_classes`).
Nothing here reads test data.

    python experiments/evidence_weight.py --scenarios=permuted_mnist-10x5 --seeds=0,1
    python experiments/evidence_weight.py --notrain   # the table of the finished runs

Writes `<outdir>/<scenario>/seed_<k>.json` (resumable: a finished seed is not trained
again) and `<outdir>/table.md`: ACC (%) per w, mean ± s.e.m. over seeds.
"""
import json
import os

from absl import app, flags

import cli  # noqa: I001  (first: quiet TensorFlow start-up, binds tf.keras to Keras 2)

import numpy as np

from larq_engrams import experiment, methods
from larq_engrams.evaluation import TaskEvaluator
from larq_engrams.metrics import format_mean_and_sem, mean_and_sem
from larq_engrams.training import ContinualTrainer, write_atomically

# name: (ExperimentConfig fields, epochs, learning rate), the paper grid's choice for
# the engram family (results/paper/<scenario>/selection/engram/chosen.json, as chosen again
# at the protected defaults; each record keeps the epochs and learning rate it ran with).
SCENARIOS = {
    "permuted_mnist-10x5": (dict(scenario="permuted_mnist", setting="domain", num_tasks=10), 5, 0.005),
    "permuted_mnist-50x3": (dict(scenario="permuted_mnist", setting="domain", num_tasks=50), 3, 0.005),
    "permuted_mnist-100x3": (dict(scenario="permuted_mnist", setting="domain", num_tasks=100), 3, 0.005),  # issue 44's
    "split_mnist-class": (dict(scenario="split_mnist", setting="class"), 2, 0.001),
    "split_fashion_mnist-class": (dict(scenario="split_fashion_mnist", setting="class"), 2, 0.005),
    "split_mnist-domain": (dict(scenario="split_mnist", setting="domain"), 2, 0.001),
    "split_fashion_mnist-domain": (dict(scenario="split_fashion_mnist", setting="domain"), 2, 0.001),
}

FLAGS = flags.FLAGS
flags.DEFINE_list("scenarios", ["permuted_mnist-10x5"], f"Of: {', '.join(SCENARIOS)}.")
flags.DEFINE_list("seeds", ["0", "1"], "Seeds (each draws its own validation split).")
flags.DEFINE_list("weights", ["0", "0.2", "0.5", "1", "2", "5"], "Product-of-experts weights w to score.")
flags.DEFINE_list("hidden", ["1024", "1024"], "Hidden widths.")
flags.DEFINE_string("outdir", "results/evidence_weight", "Where results go.")
flags.DEFINE_integer("epochs", None, "Override the scenario's epochs per task (checks).", lower_bound=1)
flags.DEFINE_integer("num_tasks", None, "Only the first N tasks (checks).", lower_bound=1)
flags.DEFINE_bool("train", True, "--notrain: only write the table of the finished runs.")
flags.DEFINE_float("engram_fraction", None, "rho, each engram's expected share of the units; default: the "
                   "package's, min(0.2, 1 / T) (give its own --outdir when not the default).",
                   lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_bool("protect_engrams", methods.HyperParameters.protect_engrams, "Train with `protect_engrams` (an "
                  "earlier engram's parameters frozen while later ones train; --noprotect_engrams: not; give its "
                  "own --outdir when not the default).")


def weight_accuracies(model, scenario, weights):
    """{w: ACC}, and "router": the router alone, of a trained engram model on `scenario`
    (the model's own weight is put back afterwards)."""
    out, own = {}, model.lda_weight
    for weight in weights:
        model.lda_weight = float(weight)
        model.set_inference("infer")  # drops the functions traced with the previous w
        out[str(weight)] = float(np.mean(TaskEvaluator(model, scenario).accuracies()))
    model.lda_weight = own
    model.set_inference("infer")
    router = model.task_discriminant
    correct = total = 0
    for task in scenario:
        for x, y in task.test:
            correct += int(np.sum(router.predict_classes(model.flatten(x)).numpy().argmax(-1) == y.numpy()))
            total += int(y.shape[0])
    out["router"] = correct / total
    return out


def train_and_score(name, seed, path):
    fields, epochs, learning_rate = SCENARIOS[name]
    epochs = FLAGS.epochs or epochs
    fields = {**fields, **({"num_tasks": FLAGS.num_tasks} if FLAGS.num_tasks else {})}
    hp = methods.HyperParameters(hidden=tuple(int(h) for h in FLAGS.hidden), learning_rate=learning_rate, seed=seed,
                                 protect_engrams=FLAGS.protect_engrams, engram_fraction=FLAGS.engram_fraction)
    config = experiment.ExperimentConfig(**fields, epochs=epochs, evaluate_on="validation", hparams=hp)
    scenario = experiment.make_scenario(config, seed)
    setup = methods.build("engram_bnn", scenario, hp)
    ContinualTrainer(setup.model, setup.optimizer, epochs=epochs, verbose=0, seed=seed).fit(setup.scenario)
    scores = weight_accuracies(setup.model, setup.scenario, FLAGS.weights)
    record = {"scenario": name, "seed": seed, "epochs": epochs, "learning_rate": learning_rate,
              "hidden": list(hp.hidden), "default_weight": setup.model.lda_weight, "validation_acc": scores,
              "router_class_covariance": setup.model.lda_class_covariance,
              "protect_engrams": setup.model.protect_engrams,
              "engram_fraction": setup.model.engram_layers[0].engram_fraction}
    write_atomically(path, json.dumps(record, indent=1))
    print(name, seed, {k: round(100 * v, 1) for k, v in scores.items()})


def write_table():
    rows = []
    for name in SCENARIOS:
        folder = os.path.join(FLAGS.outdir, name)
        records = [json.load(open(os.path.join(folder, f))) for f in sorted(os.listdir(folder))
                   if f.endswith(".json")] if os.path.isdir(folder) else []
        if not records:
            continue
        keys = list(records[0]["validation_acc"])
        cells = [format_mean_and_sem(mean_and_sem([r["validation_acc"][k] for r in records]), len(records))
                 for k in keys]
        # Records written before the flags existed ran unprotected at rho 0.2.
        protect = ", protect_engrams" if records[0].get("protect_engrams", False) else ""
        rho = records[0].get("engram_fraction", 0.2)
        protect += f", engram fraction {rho:g}" if rho != 0.2 else ""
        rows.append((name, len(records), records[0]["router_class_covariance"] + protect, keys, cells))
    lines = ["Validation ACC (%) of engram_bnn's output for each product-of-experts weight w (w = 0: the "
             "network alone; router: the router's class evidence alone), mean ± s.e.m. over seeds. "
             "`experiments/evidence_weight.py`.", ""]
    for name, count, covariance, keys, cells in rows:
        lines += [f"**{name}** ({count} seeds, class evidence: {covariance})", "",
                  "| " + " | ".join(f"w = {k}" if k != "router" else "router alone" for k in keys) + " |",
                  "|" + "---|" * len(keys), "| " + " | ".join(cells) + " |", ""]
    os.makedirs(FLAGS.outdir, exist_ok=True)
    with open(os.path.join(FLAGS.outdir, "table.md"), "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cli.require_known("scenarios", FLAGS.scenarios, SCENARIOS)
    if FLAGS.train:
        for name in FLAGS.scenarios:
            for seed in map(int, FLAGS.seeds):
                path = os.path.join(FLAGS.outdir, name, f"seed_{seed}.json")
                if not os.path.exists(path):
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    train_and_score(name, seed, path)
    write_table()


if __name__ == "__main__":
    cli.run(main)
