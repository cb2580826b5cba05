"""`train_step`: one optimizer step of a continual learner, written once.

`ContinualTrainer` compiles it (inside `strategy.run`), and the benchmarks time it, so
what is measured is what is trained.
"""
import tensorflow as tf

from larq_engrams.class_statistics import ClassStatisticsClassifier
from larq_engrams.models import EngramModel
from larq_engrams.task_inputs import masked_logits, model_inputs

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
    pushed to -inf (multi-head training). An `EngramModel` records the batch's labels
    for its active engram; with `execution="sparse"` (its default) the step runs on the
    active engram's sub-network only (`EngramModel.train_engram`). A
    `ClassStatisticsClassifier` (NCM, SLDA) adds the batch to its statistics instead
    (loss 0; the optimizer is not used; the step's accuracy is that of the discriminant
    as last refreshed: refreshing is a Cholesky solve, done once when the model is next
    called, e.g. by the evaluation).
    """
    is_engram = isinstance(model, EngramModel)
    if is_engram:
        model.observe_labels(y)

    def loss_of(logits):
        logits = masked_logits(logits, task_ids, class_mask_table)
        loss = tf.nn.compute_average_loss(_CROSSENTROPY(y, logits))
        if model.losses:
            loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
        return loss

    if isinstance(model, ClassStatisticsClassifier):  # learns by counting: no loss, no gradient
        logits, loss = model.stale_logits(x), tf.constant(0.0)  # for the progress bar only
        model.observe(x, y)
    elif is_engram and model.execution == "sparse":
        if task_ids is not None:  # training gates by the active engram, not by the ids
            tf.debugging.assert_equal(
                tf.cast(task_ids, tf.int32), model.engram_layers[0].active_task,
                message="EngramModel trains its active engram: every task id in a training "
                        "batch must equal it (call begin_task).",
            )
        logits, loss = model.train_engram(x, loss_of, optimizer)
    else:
        with tf.GradientTape() as tape:
            logits = model(model_inputs(model, x, task_ids), training=True)
            loss = loss_of(logits)
        variables = model.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
    predictions = tf.argmax(masked_logits(logits, task_ids, class_mask_table), axis=-1, output_type=tf.int32)
    correct = tf.reduce_sum(tf.cast(predictions == tf.cast(y, tf.int32), tf.float32))
    return loss, correct, tf.cast(tf.shape(y)[0], tf.float32)
