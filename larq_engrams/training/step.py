"""`train_step`: one optimizer step of a continual learner, written once.

`ContinualTrainer` compiles it (inside `strategy.run`), and the benchmarks time it, so
what is measured is what is trained.
"""
import tensorflow as tf

from larq_engrams import protocol
from larq_engrams.task_inputs import masked_logits

__all__ = ["train_step"]

_CROSSENTROPY = tf.keras.losses.SparseCategoricalCrossentropy(
    from_logits=True, reduction=tf.keras.losses.Reduction.NONE
)


def train_step(model, optimizer, x, y, task_ids=None, class_mask_table=None):
    r"""One step on a batch; returns `(loss, correct, count)` for this replica.

    ```
    loss = mean_i CE(y_i, logits_i) + sum(model.losses) / replicas
    ```

    with the mean over the global batch (`tf.nn.compute_average_loss`), so the step is
    the same under any `tf.distribute` strategy. In task-incremental settings
    (`task_ids` and `class_mask_table` given) the logits outside the task's classes are
    pushed to -inf (multi-head training). The step itself is the model's
    (`protocol.train_on_batch`): an `EngramModel` trains its active engram's
    sub-network, a `ClassStatisticsClassifier` (NCM, SLDA) adds the batch to its
    statistics, any other model takes a gradient step on every trainable variable.
    `correct` ranks the logits as evaluation does (`protocol.logits_as_evaluated`).
    """

    def loss_of(logits):
        logits = masked_logits(logits, task_ids, class_mask_table)
        loss = tf.nn.compute_average_loss(_CROSSENTROPY(y, logits))
        if model.losses:
            loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
        return loss

    logits, loss = protocol.train_on_batch(model, x, y, loss_of, optimizer, task_ids)
    ranked = protocol.logits_as_evaluated(model, masked_logits(logits, task_ids, class_mask_table))
    predictions = tf.argmax(ranked, axis=-1, output_type=tf.int32)
    correct = tf.reduce_sum(tf.cast(predictions == tf.cast(y, tf.int32), tf.float32))
    return loss, correct, tf.cast(tf.shape(y)[0], tf.float32)
