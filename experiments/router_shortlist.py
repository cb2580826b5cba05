"""The router's shortlist on validation data: which engram each input is routed to, and
the router alone's accuracy, when only the k engrams with the best mean group score
their groups (`InputDiscriminant`, shortlist), against scoring every group.

Builds the router that `slda_rf` (the router alone) and the engram methods build for the
scenario (its features, shrinkage, class evidence), observes every task's training data
once, and on every task's validation data (the test split is never loaded) routes each
input with each `--shortlist` k ("none": every group). One router serves every k, so the
rows differ only in the routing rule. Also prints the multiply-adds to route one input's
features against the groups (`task_inference.scoring_multiply_adds`; the features
themselves cost the same for every k).

    python experiments/router_shortlist.py --scenario=permuted_mnist --num_tasks=100 --shortlist=none,1,4,16
"""
import json

from absl import flags

import cli  # noqa: I001  (first: quiet TensorFlow start-up, binds tf.keras to Keras 2)

import tensorflow as tf

from larq_engrams import experiment, methods
from larq_engrams.task_inference import scoring_multiply_adds

FLAGS = flags.FLAGS
flags.DEFINE_enum("scenario", "permuted_mnist", ["permuted_mnist", "split_mnist", "split_fashion_mnist"], "Benchmark.")
flags.DEFINE_enum("setting", "domain", ["class", "domain"], "Split benchmarks: the setting (permuted: domain).")
flags.DEFINE_integer("num_tasks", None, "Tasks (permuted_mnist: default 10; split: all 5).", lower_bound=1)
flags.DEFINE_list("shortlist", ["none", "1", "4", "16"], "Shortlist sizes k to compare ('none': every group).")
flags.DEFINE_integer("lda_features", None, "Router features M (default: the methods' rule for the sequence).")
flags.DEFINE_integer("seed", 0, "Seed of the data (permutations, split) and of the router's features.")
flags.DEFINE_string("output", None, "Write the table (markdown) and a JSON beside it here (path without suffix).")


def _routes(router, scenario, shortlists):
    """For each k: (task inference %, the router alone's ACC %) over every task's
    validation data; the router alone predicts the routed engram's best class (in
    domain-IL its task's own class evidence, where it keeps one)."""
    routed, correct, total = {k: 0 for k in shortlists}, {k: 0 for k in shortlists}, 0
    for task in scenario:
        for x, y in task.test:  # the validation split: make_scenario(evaluate_on="validation")
            features = router.transform(tf.reshape(tf.cast(x, tf.float32), (tf.shape(x)[0], -1)))
            groups = router.feature_group_scores(features)  # (batch, engrams, classes)
            for k in shortlists:
                router.shortlist = k
                best = router.route(features, tf.reduce_max(groups, axis=-1))
                if router.class_kernel is not None:
                    classes = router.class_evidence(features, best)
                else:
                    classes = tf.gather(groups, best, batch_dims=1)
                routed[k] += int(tf.reduce_sum(tf.cast(best == task.task_id, tf.int32)))
                predicted = tf.argmax(classes, axis=-1, output_type=tf.int32)
                correct[k] += int(tf.reduce_sum(tf.cast(predicted == tf.cast(y, tf.int32), tf.int32)))
            total += int(tf.shape(y)[0])
    router.shortlist = None
    return {k: (100.0 * routed[k] / total, 100.0 * correct[k] / total) for k in shortlists}


def main(argv):
    del argv
    shortlists = [None if v == "none" else int(v) for v in FLAGS.shortlist]
    setting = FLAGS.setting if FLAGS.scenario.startswith("split") else "domain"
    hparams = methods.HyperParameters(hidden=(64,), lda_features=FLAGS.lda_features, seed=FLAGS.seed)
    config = experiment.ExperimentConfig(scenario=FLAGS.scenario, setting=setting, num_tasks=FLAGS.num_tasks,
                                         epochs=1, evaluate_on="validation", hparams=hparams)
    scenario = experiment.make_scenario(config, FLAGS.seed)
    # engram_bnn's router for this scenario (its networks are never trained: the router needs none)
    router = methods.build("engram_bnn", scenario, hparams).model.task_discriminant
    for task in scenario:
        for x, y in task.train.unbatch().batch(1000):
            router.observe(tf.reshape(tf.cast(x, tf.float32), (tf.shape(x)[0], -1)), y, task.task_id)
        router.refresh()
        print(f"observed task {task.task_id + 1} of {scenario.num_tasks}", flush=True)
    results = _routes(router, scenario, shortlists)
    classes = len(scenario[0].labels)  # each engram's groups with data
    rows = ["| shortlist k | task inference % | router alone ACC % | scoring multiply-adds per input |",
            "|---|---|---|---|"]
    for k in shortlists:
        inference, acc = results[k]
        cost = scoring_multiply_adds(router.max_tasks, classes, router.num_features, shortlist=k,
                                     task_evidence=router.class_kernel is not None)
        rows.append(f"| {'every group' if k is None else k} | {inference:.2f} | {acc:.2f} | {cost / 1e6:.2f} M |")
    title = (f"{FLAGS.scenario} ({setting}), {scenario.num_tasks} tasks, validation, seed {FLAGS.seed}, "
             f"M = {router.num_features} ({router.feature_map}), class evidence {router.class_covariance}")
    if cli.report_table(f"{title} (`experiments/router_shortlist.py`)", "\n".join(rows), FLAGS.output):
        with open(FLAGS.output + ".json", "w") as f:
            json.dump({"title": title, "rows": {str(k): results[k] for k in shortlists}}, f, indent=1)


if __name__ == "__main__":
    cli.run(main)
