r"""Rehearsal baselines: experience replay (ER; Chaudhry et al. 2019, "On tiny episodic
memories in continual learning") and DER++ (Buzzega et al. 2020, "Dark experience for
general continual learning"), on any Keras network.

The buffer is a class-balanced reservoir (Chrysakis & Moens 2020, CBRS) over the stream
of every task's training examples. For an example of class c, with m_c examples of c
stored, n_c seen so far (this one included) and a full buffer:

```
c not among the largest stored classes: it replaces a uniformly drawn stored example of
                                        a uniformly drawn largest class
otherwise:                              with probability m_c / n_c it replaces a
                                        uniformly drawn stored example of class c
```

While the buffer has room every example enters. With one class this is reservoir
sampling (every example seen is stored with probability capacity / n); with several it
keeps the classes as equal as the stream allows.

The loss of one step on a batch (x, y) of the current task, with (x', y', z') and
(x'', y'') drawn uniformly from the buffer, as many as the batch:

```
ER:     L = 1/2 [CE(y, f(x)) + CE(y', f(x'))]                 the joint batch's mean (Mammoth's ER)
DER++:  L = CE(y, f(x)) + alpha |f(x') - z'|^2 + beta CE(y'', f(x''))
```

z' are the logits stored with the example (DER's "dark knowledge"). Here examples enter
the buffer when their task ends (`ReplayUpdate`), with the logits of the network that
has just learned them; Buzzega et al. insert during training, with the logits of that
step. Inputs are stored in the data set's dtype (uint8 pixels: x = stored / 255), so a
buffer of n MNIST images takes n (784 + 4) bytes (+ 4 C for DER++'s logits).
"""
import numpy as np
import tensorflow as tf

from larq_engrams.arguments import check_choice, check_positive_int
from larq_engrams.callbacks.base import TaskEndCallback
from larq_engrams.protocol import variable_bytes
from larq_engrams.task_inputs import split_task_inputs

__all__ = ["ReplayBuffer", "ReplayModel", "ReplayUpdate", "class_balanced_reservoir"]

_CROSSENTROPY = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True,
                                                              reduction=tf.keras.losses.Reduction.NONE)


def class_balanced_reservoir(labels, stored, seen, capacity, rng):
    """Runs CBRS over a stream of `labels`; returns, per stream example, the buffer
    slot it is written to (-1: not stored). `stored` (slots' labels, -1 empty, length
    `capacity`) and `seen` (per-class counts) are updated in place. Later writes to a
    slot overwrite earlier ones."""
    slots = np.full(len(labels), -1, np.int64)
    size = int(np.sum(stored >= 0))
    counts = np.bincount(stored[stored >= 0], minlength=len(seen))
    for i, c in enumerate(np.asarray(labels, np.int64)):
        seen[c] += 1
        if size < capacity:
            slot = size
            size += 1
        else:
            largest = np.flatnonzero(counts == counts.max())
            if c not in largest:
                victim = rng.choice(largest)
            elif rng.random() < counts[c] / seen[c]:
                victim = c
            else:
                continue
            slot = rng.choice(np.flatnonzero(stored == victim))
            counts[victim] -= 1
        stored[slot] = c
        counts[c] += 1
        slots[i] = slot
    return slots


class ReplayBuffer(tf.keras.layers.Layer):
    """A class-balanced reservoir of examples, as non-trainable weights (saved with the
    model and in checkpoints). It is state, never called on inputs.

    Args:
        capacity: how many examples it holds.
        input_shape: the shape of one input (as the network takes it).
        num_classes: the labels' range.
        logits: also store each example's logits (DER++).
        input_dtype: "uint8" (inputs are pixels / 255 and stored as the pixels) or
            "float32".
        seed: seeds the reservoir's draws (per task) and the replay batches.
    """

    def __init__(self, capacity, input_shape, num_classes, logits=False, input_dtype="uint8", seed=0, **kwargs):
        super().__init__(name=kwargs.pop("name", "replay_buffer"), trainable=False, **kwargs)
        self.capacity = check_positive_int("capacity", capacity, owner="ReplayBuffer")
        self.input_dtype = check_choice("input_dtype", input_dtype, ("uint8", "float32"), owner="ReplayBuffer")
        self.num_classes, self.seed = int(num_classes), int(seed)
        self.example_shape = tuple(int(d) for d in input_shape)
        state = dict(trainable=False, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.inputs = self.add_weight("inputs", (self.capacity, *self.example_shape), dtype=input_dtype,
                                      initializer="zeros", **state)
        self.labels = self.add_weight("labels", (self.capacity,), dtype=tf.int32,
                                      initializer=tf.keras.initializers.Constant(-1), **state)
        self.seen = self.add_weight("seen", (self.num_classes,), dtype=tf.int64, initializer="zeros", **state)
        self.logits = None
        if logits:
            self.logits = self.add_weight("logits", (self.capacity, self.num_classes), initializer="zeros", **state)
        # Seed the next task's reservoir draws and the next replay batch (stateless draws: resumable).
        self.insertions = self.add_weight("insertions", (), dtype=tf.int64, initializer="zeros", **state)
        self.draws = self.add_weight("draws", (), dtype=tf.int64, initializer="zeros", **state)

    @property
    def size(self):
        """How many slots hold an example (a scalar tensor)."""
        return tf.reduce_sum(tf.cast(self.labels >= 0, tf.int32))

    def bytes(self):
        """The bytes the buffer holds: inputs in their dtype, int32 labels, float32 logits."""
        return variable_bytes([self.inputs, self.labels] + ([self.logits] if self.logits is not None else []))

    def encode(self, x):
        """Inputs as stored; `ValueError` if uint8 storage would change them."""
        x = np.asarray(x, np.float32)
        if self.input_dtype == "float32":
            return x
        pixels = np.rint(x * 255.0)
        if np.any(pixels < 0) or np.any(pixels > 255) or np.max(np.abs(pixels / 255.0 - x), initial=0) > 1e-6:
            raise ValueError("ReplayBuffer: the inputs are not pixels / 255 (normalized or permuted by value?); "
                             "store them as input_dtype='float32'.")
        return pixels.astype(np.uint8)

    def decode(self, stored):
        """The network's inputs from stored ones."""
        x = tf.cast(stored, tf.float32)
        return x / 255.0 if self.input_dtype == "uint8" else x

    def add(self, x, y, logits=None):
        """Streams a task's examples through the reservoir (eager; NumPy arrays)."""
        if (logits is None) != (self.logits is None):
            raise ValueError("ReplayBuffer.add: give `logits` exactly when the buffer stores them.")
        stored, seen = self.labels.numpy(), self.seen.numpy()
        rng = np.random.default_rng([self.seed, int(self.insertions.numpy())])
        y = np.asarray(y, np.int64)
        slots = class_balanced_reservoir(y, stored, seen, self.capacity, rng)
        # The last write to each slot wins.
        last = {slot: i for i, slot in enumerate(slots) if slot >= 0}
        if last:  # eager, once per task: whole-variable writes work for every dtype on every device
            index, rows = np.array(list(last.keys())), np.array(list(last.values()))
            inputs = self.inputs.numpy()
            inputs[index] = self.encode(np.asarray(x)[rows])
            self.inputs.assign(inputs)
            if logits is not None:
                values = self.logits.numpy()
                values[index] = np.asarray(logits, np.float32)[rows]
                self.logits.assign(values)
        self.labels.assign(stored.astype(np.int32))
        self.seen.assign(seen)
        self.insertions.assign_add(1)

    def sample(self, n):
        """`(x, y, logits or None, weight)` of n uniform draws with replacement (in-graph);
        weight is 0.0 while the buffer is empty (the draws are then meaningless: draw
        only from a filled buffer, as `ReplayModel` does)."""
        size = self.size
        seed = tf.stack([tf.constant(self.seed, tf.int64), self.draws])
        self.draws.assign_add(1)
        index = tf.random.stateless_uniform([n], seed, minval=0, maxval=tf.maximum(size, 1), dtype=tf.int32)
        logits = None if self.logits is None else tf.gather(self.logits, index)
        labels = tf.maximum(tf.gather(self.labels, index), 0)  # empty slots: -1, a label no loss accepts
        return self.decode(tf.gather(self.inputs, index)), labels, logits, tf.cast(size > 0, tf.float32)


@tf.keras.utils.register_keras_serializable(package="larq_engrams")
class ReplayModel(tf.keras.Model):
    """Wraps a network with a replay buffer: `method="er"` or `"derpp"` (module
    docstring). Called, it is the network. `ReplayUpdate` fills the buffer at the end
    of each task (`ContinualTrainer` or `model.fit`); `remember(dataset)` does it by hand.

    Args:
        network: a Keras model returning logits.
        buffer_size: examples kept.
        method: "er" or "derpp".
        alpha, beta: DER++'s weights (Buzzega et al.'s MNIST settings are around
            alpha 0.2-1, beta 0.5-1; the grid chooses on validation).
        input_dtype, seed: as `ReplayBuffer`.
    """

    def __init__(self, network, buffer_size=200, method="er", alpha=0.5, beta=0.5, input_dtype="uint8", seed=0,
                 **kwargs):
        super().__init__(name=kwargs.pop("name", f"{method}_{network.name}"), **kwargs)
        self.method = check_choice("method", method, ("er", "derpp"), owner="ReplayModel")
        self.network = network
        self.alpha, self.beta = float(alpha), float(beta)
        self.buffer = ReplayBuffer(buffer_size, network.input_shape[1:], int(network.output_shape[-1]),
                                   logits=method == "derpp", input_dtype=input_dtype, seed=seed,
                                   name="replay_buffer")
        self.build(network.input_shape)  # built like the network it wraps: saving needs no first call

    def call(self, inputs, training=None):
        return self.network(inputs, training=training)

    def check_scenario(self, scenario):
        """The continual protocol: replay here serves class- and domain-IL (in task-IL
        the buffer would need each example's task mask)."""
        if scenario.provides_task_id:
            raise ValueError(f"{self.method}: replay runs in class- and domain-incremental scenarios, "
                             "not task-incremental ones.")

    def _replay_batch(self, x, filled):
        """n buffer draws; the current batch itself while the buffer is empty, so that no
        forward pass sees empty slots (with ER's joint batch [x, x], BatchNorm's batch
        statistics are those of x alone). No `tf.cond`: XLA compiles the step whole."""
        replayed_x, replayed_y, stored_logits, _ = self.buffer.sample(tf.shape(x)[0])
        return tf.where(filled, replayed_x, x), replayed_y, stored_logits

    def _step(self, x, current_loss, optimizer):
        """One step: the loss of the module docstring, the plain loss while the buffer is empty."""
        batch, filled = tf.shape(x)[0], self.buffer.size > 0
        with tf.GradientTape() as tape:
            replayed_x, replayed_y, stored_logits = self._replay_batch(x, filled)
            if self.method == "er":  # one forward pass over the joint batch, as Chaudhry et al. and Mammoth
                outputs = self.network(tf.concat([x, replayed_x], axis=0), training=True)
                logits = outputs[:batch]
                loss = current_loss(logits)
                replayed = tf.nn.compute_average_loss(_CROSSENTROPY(replayed_y, outputs[batch:]))
                loss = tf.where(filled, 0.5 * (loss + replayed), loss)
            else:
                logits = self.network(x, training=True)
                dark = tf.reduce_mean(tf.square(self.network(replayed_x, training=True) - stored_logits), axis=-1)
                labelled_x, labelled_y, _ = self._replay_batch(x, filled)
                labelled = _CROSSENTROPY(labelled_y, self.network(labelled_x, training=True))
                extra = (self.alpha * tf.nn.compute_average_loss(dark)
                         + self.beta * tf.nn.compute_average_loss(labelled))
                loss = current_loss(logits) + tf.where(filled, extra, tf.zeros_like(extra))
        variables = self.network.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return logits, loss

    def continual_train_step(self, x, y, loss_fn, optimizer, task_ids=None):
        """The continual protocol's step (`larq_engrams.protocol`)."""
        return self._step(x, loss_fn, optimizer)

    def train_step(self, data):
        x, y, sample_weight = tf.keras.utils.unpack_x_y_sample_weight(data)
        # Keras' own loss: the compiled loss, the sample weights and `model.losses`.
        logits, loss = self._step(x, lambda out: self.compute_loss(x, y, out, sample_weight), self.optimizer)
        self.compiled_metrics.update_state(y, logits)
        return {"loss": loss, **{m.name: m.result() for m in self.metrics}}

    def remember(self, dataset):
        """Streams one pass of a task's (x, y) batches into the buffer (DER++: with the
        network's logits now)."""
        xs, ys, zs = [], [], []
        for batch in dataset:
            x, y, _ = tf.keras.utils.unpack_x_y_sample_weight(batch)
            x, _ = split_task_inputs(x)
            xs.append(x.numpy())
            ys.append(y.numpy())
            if self.buffer.logits is not None:
                zs.append(self.network(x, training=False).numpy())
        if xs:
            self.buffer.add(np.concatenate(xs), np.concatenate(ys), np.concatenate(zs) if zs else None)

    def after_stream_batch(self, x, y):
        """The continual protocol's stream hook: online replay (Chaudhry et al. 2019;
        Mammoth's online ER) puts every trained stream batch through the reservoir at
        once (DER++: with the network's logits now), as no task end will come."""
        logits = self.network(x, training=False).numpy() if self.buffer.logits is not None else None
        self.buffer.add(np.asarray(x), np.asarray(y), logits)

    def state_bytes(self):
        """The continual protocol's `(learn, predict)` bytes: the buffer, kept to learn."""
        return self.buffer.bytes(), 0

    def get_config(self):
        return {"network": tf.keras.layers.serialize(self.network), "buffer_size": self.buffer.capacity,
                "method": self.method, "alpha": self.alpha, "beta": self.beta,
                "input_dtype": self.buffer.input_dtype, "seed": self.buffer.seed, "name": self.name}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["network"] = tf.keras.layers.deserialize(config["network"], custom_objects=custom_objects)
        return cls(**config)


class ReplayUpdate(TaskEndCallback):
    """Adds each task's training examples to a `ReplayModel`'s buffer when the task ends
    (trainer task hook, or each `model.fit` under the plain Keras path, with the
    scenario's task data). In a task-free stream the model inserts every batch
    instead (`ReplayModel.after_stream_batch`) and this callback is not called."""

    in_streams = "skip"

    def __init__(self, replay_model, scenario=None):
        super().__init__()
        self.replay_model = replay_model
        self.scenario = scenario

    def task_ended(self, task):
        self.replay_model.remember(self.scenario[task].train)
