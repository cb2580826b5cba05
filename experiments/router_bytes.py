"""The engram router's bytes against the number of tasks and of random features: what
issue 44's bound (router state <= 16 MiB at 100 tasks) allows, before any accuracy is
measured. Builds domain-incremental engram models (a router group per (task, class), flat
inputs as in Permuted MNIST, dense random features) and counts `protocol.state_bytes`:
the statistics kept to learn (counts, class sums, the packed shared scatter) and what
scores inputs (the discriminant's kernel and bias, the projection's sign bits). The
count follows the shapes alone, so no data is read.

    python experiments/router_bytes.py --tasks=10,50,100,200 --features=1024,1536,2048
"""
from absl import flags

import cli  # noqa: I001  (first: quiet TensorFlow start-up, binds tf.keras to Keras 2)

from larq_engrams import protocol
from larq_engrams.models import engram_bnn

FLAGS = flags.FLAGS
flags.DEFINE_list("tasks", ["10", "50", "100", "200"], "Task counts (engrams, each with a group per class).")
flags.DEFINE_list("features", ["1024", "1536", "2048"], "Router features M.")
flags.DEFINE_integer("inputs", 784, "Input size.")
flags.DEFINE_integer("classes", 10, "Classes per task.")
flags.DEFINE_string("output", None, "Also write the table here (markdown).")

MIB = 2 ** 20


def main(argv):
    del argv
    rows = ["| M | tasks | learn (MiB) | predict (MiB) | both (MiB) |", "|---|---|---|---|---|"]
    for m in (int(v) for v in FLAGS.features):
        for t in (int(v) for v in FLAGS.tasks):
            model = engram_bnn((FLAGS.inputs,), FLAGS.classes, hidden=(64,), max_tasks=t, lda_features=m,
                               router_features="dense", seed=0)
            model.build((None, FLAGS.inputs))
            kept = protocol.state_bytes(model)
            learn, predict = kept["learn"], kept["predict"]
            rows.append(f"| {m} | {t} | {learn / MIB:.2f} | {predict / MIB:.2f} | {(learn + predict) / MIB:.2f} |")
    table = "\n".join(rows)
    print(table)
    if FLAGS.output:
        with open(FLAGS.output, "w") as f:
            f.write(f"Router bytes (domain-IL, {FLAGS.classes} classes per task, {FLAGS.inputs} inputs; "
                    f"`experiments/router_bytes.py`):\n\n{table}\n")


if __name__ == "__main__":
    cli.run(main)
