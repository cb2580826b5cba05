"""Engram-gated binarized dense layers (stochastic engrams, Aguilar et al. 2025).

Each `EngramDense` layer keeps an engram bank: one binary mask E_t in {0, 1}^N per task
over its N units (docs/method.md, section 3). During task t only the units of E_t are active,
each reactivated per sample and step with probability q; every other unit outputs
exactly 0, receives no gradient and keeps its BatchNorm statistics.
"""
import logging

import larq as lq
import numpy as np
import tensorflow as tf

from larq_engrams.arguments import check_fraction, check_int
from larq_engrams.capacity import add_engram_rows_weight, grow_rows, rows_of
from larq_engrams.block_updates import Block

__all__ = ["EngramDense", "engram_fraction_for", "MAX_ENGRAM_FRACTION"]

MAX_ENGRAM_FRACTION = 0.2  # rho for a short sequence: the engram paper's share of the units


def engram_fraction_for(max_tasks):
    """rho = min(0.2, 1 / T), the default engram fraction of a bank of T engrams.

    With excitability beta = 6 allocation prefers unused units, so engrams of 1 / T of
    the units fit side by side and barely share one: with `protect_engrams` nothing an
    engram learned is overwritten, and no later engram finds its units already frozen.
    Short sequences keep the paper's 0.2 (at T <= 5 the engrams fit either way). Chosen
    on validation data: with protection, Permuted MNIST's networks alone (task given)
    score 4-6 points more after 10 tasks (512 to 2048 units a layer), 16 more after 50
    and 12 more after 100 than at rho 0.2 without it, and the model (router and
    networks) scores the same within 0.1 point, also in class- and domain-IL on the
    Split benchmarks (results/issue43).
    """
    return min(MAX_ENGRAM_FRACTION, 1.0 / check_int("max_tasks", max_tasks, 1))

_TASK_MODE = "task"
_UNION_MODE = "union"


class _DropUnclippedKernelWarning(logging.Filter):
    """Larq warns about binary kernels without a `kernel_constraint`. The hidden weights
    are left unclipped on purpose here: metaplastic consolidation needs |W_h| to grow."""

    def filter(self, record):
        return "without setting `kernel_constraint`" not in record.getMessage()


logging.getLogger("larq.layers_base").addFilter(_DropUnclippedKernelWarning())


def default_kernel_quantizer():
    """`SteSign(clip_value=None)`: identity straight-through gradient, no clipping."""
    return lq.quantizers.SteSign(clip_value=None)


def default_kernel_initializer():
    """Uniform in [-0.05, 0.05] (width 0.1), as in Laborieux et al. 2021."""
    return tf.keras.initializers.RandomUniform(-0.05, 0.05)


@tf.keras.utils.register_keras_serializable(package="larq_engrams")
class EngramDense(tf.keras.layers.Layer):
    r"""A binarized dense block whose units are gated by per-task stochastic engrams.

    Computes, for the active task t (or per-sample task ids passed as `task`):

    ```
    z   = QuantDense(x)                  # binary kernel sign(W_h), no bias
    y   = gamma * (z - mu) / sqrt(var + eps) + beta        # BatchNorm
    out = sign(y) * E_t * g / (q if rescale_reactivation else 1)
    ```

    with g_i ~ Bernoulli(q) drawn per sample, unit and step while training (stochastic
    reactivation; g = 1 at inference). Silent units output exactly 0. Because the sign
    is taken *inside* this layer, the next layer must not re-quantize its inputs
    (Larq's sign(0) is +1): give it `input_quantizer=None` so zeros stay zeros.

    Engram allocation (`allocate(t)`, once per task), by excitability:

    ```
    e_i = exp(-beta * u_i)                       # u_i: engrams unit i already belongs to
    p_i = min(1, rho * N * e_i / sum_j e_j)       # expected engram size rho * N
    E_t[i] ~ Bernoulli(p_i)                       # seeded by (seed, t)
    ```

    beta = 0 is uniform random allocation; large beta gives nearly disjoint engrams.

    BatchNorm: batch statistics while training, moving statistics at inference. The
    moving statistics of a unit are updated only while it belongs to an engram being
    trained, so training task t leaves every other unit's state untouched.

    Masks, allocation flags, the active task and the reactivation step counter are
    non-trainable layer weights: they are saved and restored with the model.

    Args:
        units: N, the number of hidden units.
        max_tasks: how many engrams the bank can hold.
        engram_fraction: rho in (0, 1], the expected fraction of units per engram;
            None: `engram_fraction_for(max_tasks)`, min(0.2, 1 / max_tasks).
        activation_probability: q in (0, 1], per-sample reactivation probability of
            engram units while training.
        excitability: beta >= 0, the bias of allocation towards little-used units.
            beta = 6 (nearly disjoint engrams while they fit) with rho = 0.2 was the
            best of a small sweep on Split MNIST class-IL (bundled data; see the
            README's results section).
        rescale_reactivation: divide active outputs by q while training (as dropout).
        seed: seeds allocation and reactivation.
        input_quantizer: Larq quantizer for the inputs (None for real-valued inputs or
            for the output of another `EngramDense`).
        kernel_quantizer: Larq quantizer for the kernel; default `SteSign(clip_value=None)`.
        kernel_initializer: default uniform in [-0.05, 0.05].
        kernel_constraint: default None (no clipping of the hidden weights).
        activation_quantizer: the sign activation applied after BatchNorm; default
            `ste_sign` (straight-through gradient, zero where |y| > 1).
        momentum, epsilon: BatchNorm; defaults 0.9 (PyTorch's 0.1) and 1e-5, as the
            reference implementation.
    """

    def __init__(
        self,
        units,
        max_tasks,
        engram_fraction=None,
        activation_probability=0.9,
        excitability=6.0,
        rescale_reactivation=False,
        seed=0,
        input_quantizer=None,
        kernel_quantizer=None,
        kernel_initializer=None,
        kernel_constraint=None,
        activation_quantizer="ste_sign",
        momentum=0.9,
        epsilon=1e-5,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.units = check_int("units", units, 1, owner="EngramDense")
        self._max_tasks = check_int("max_tasks", max_tasks, 1, owner="EngramDense")
        if engram_fraction is None:
            engram_fraction = engram_fraction_for(self._max_tasks)
        self.engram_fraction = check_fraction("engram_fraction", engram_fraction, owner="EngramDense")
        self.activation_probability = check_fraction(
            "activation_probability", activation_probability, owner="EngramDense")
        if not float(excitability) >= 0.0:
            raise ValueError(f"EngramDense: `excitability` must be >= 0, got {excitability!r}.")
        self.excitability = float(excitability)
        self.rescale_reactivation = bool(rescale_reactivation)
        self.seed = check_int("seed", seed, 0, owner="EngramDense")
        if not 0.0 <= float(momentum) < 1.0:
            raise ValueError(f"EngramDense: `momentum` must be in [0, 1), got {momentum!r}.")
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.activation_quantizer = lq.quantizers.get(activation_quantizer)
        self.dense = lq.layers.QuantDense(
            self.units,
            use_bias=False,
            input_quantizer=input_quantizer,
            kernel_quantizer=(
                default_kernel_quantizer() if kernel_quantizer is None else kernel_quantizer
            ),
            kernel_initializer=(
                default_kernel_initializer()
                if kernel_initializer is None
                else kernel_initializer
            ),
            kernel_constraint=kernel_constraint,
            name="quant_dense",
        )

    def build(self, input_shape):
        self.dense.build(input_shape)
        n, tasks = self.units, self.max_tasks
        self.gamma = self.add_weight("gamma", shape=(n,), initializer="ones")
        self.beta = self.add_weight("beta", shape=(n,), initializer="zeros")
        # Per-replica statistics averaged on read, as Keras' BatchNormalization.
        stat = dict(
            trainable=False,
            synchronization=tf.VariableSynchronization.ON_READ,
            aggregation=tf.VariableAggregation.MEAN,
        )
        self.moving_mean = self.add_weight("moving_mean", (n,), initializer="zeros", **stat)
        self.moving_variance = self.add_weight(
            "moving_variance", (n,), initializer="ones", **stat
        )
        state = dict(trainable=False, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        # One row per engram: the bank grows past `max_tasks` (`grow`).
        self.engram_masks = add_engram_rows_weight(self, "engram_masks", tasks, (n,), **state)
        self.allocated = add_engram_rows_weight(self, "allocated", tasks, (), **state)
        self.active_task = self.add_weight(
            "active_task", (), dtype=tf.int32, initializer="zeros", **state
        )
        # Counts training calls: with `seed`, it keys the stateless reactivation draws,
        # so a restored model continues the same random sequence.
        self.reactivation_step = self.add_weight(
            "reactivation_step", (), dtype=tf.int64, initializer="zeros", **state
        )
        # Fraction of (sample, unit) outputs that were non-zero in the last training
        # step: the engram activation rate logged to TensorBoard.
        self.activation_rate = self.add_weight(
            "activation_rate", (), initializer="zeros", **state
        )
        super().build(input_shape)

    # ----------------------------------------------------------------- engram bank
    @property
    def max_tasks(self):
        """How many engrams the bank holds now (its rows; `grow` adds more). Read
        eagerly from the weights (a restored checkpoint may hold more rows); while a
        graph is traced, the last count read."""
        if self.built and tf.executing_eagerly():
            self._max_tasks = rows_of(self.allocated)
        return self._max_tasks

    def grow(self, max_tasks):
        """Makes room for engrams up to `max_tasks` (new rows unallocated); allocation of
        the engrams already there is unchanged."""
        self._check_built()
        grow_rows(self.engram_masks, int(max_tasks))
        grow_rows(self.allocated, int(max_tasks))

    def allocate(self, task):
        """Draws the engram E_task by the excitability rule; returns it (bool array).

        Deterministic for a given `seed` and allocation history. Raises `ValueError`
        for a task outside [0, max_tasks) or one that is already allocated.
        """
        task = self._check_task(task)
        if self.is_allocated(task):
            raise ValueError(
                f"EngramDense {self.name!r}: task {task} already has an engram; "
                f"allocation happens once per task."
            )
        usage = self.usage.astype(np.float64)
        excitation = np.exp(-self.excitability * (usage - usage.min()))  # shift: stable
        p = np.minimum(1.0, self.engram_fraction * self.units * excitation / excitation.sum())
        rng = np.random.default_rng([self.seed, task])
        mask = rng.random(self.units) < p
        if not mask.any():
            logging.getLogger(__name__).warning(
                "EngramDense %r: the engram of task %d is empty (engram_fraction=%g, "
                "units=%d); the task has no capacity in this layer.",
                self.name, task, self.engram_fraction, self.units,
            )
        # Whole-variable assignments: a sliced `var[t].assign` on a MirroredVariable would
        # write only the first replica's copy, and replicas would gate differently.
        masks = self.engram_masks.numpy()
        masks[task] = mask
        allocated = self.allocated.numpy()
        allocated[task] = 1.0
        self.engram_masks.assign(masks)
        self.allocated.assign(allocated)
        return mask

    def engram_mask(self, task):
        """E_task as a boolean NumPy array of shape (units,)."""
        task = self._check_allocated(task)
        return self.engram_masks[task].numpy() > 0.5

    @property
    def usage(self):
        """u_i: the number of allocated engrams each unit belongs to (int array)."""
        self._check_built()
        return np.rint(self.engram_masks.numpy().sum(axis=0)).astype(np.int64)

    @property
    def allocated_tasks(self):
        """The tasks that have an engram, in increasing order."""
        self._check_built()
        return [int(t) for t in np.flatnonzero(self.allocated.numpy() > 0.5)]

    def is_allocated(self, task) -> bool:
        task = self._check_task(task)
        return bool(self.allocated[task].numpy() > 0.5)

    def set_active_task(self, task):
        """Makes `task` (allocated) the one trained and, by default, evaluated."""
        task = self._check_allocated(task)
        self.active_task.assign(task)

    def overlap(self, s, t) -> float:
        """|E_s and E_t| / N."""
        return float(np.mean(self.engram_mask(s) & self.engram_mask(t)))

    def overlap_matrix(self, tasks=None):
        """(K, K) |E_s and E_t| / N for the engrams `tasks` (default: the allocated
        ones), from one read of the masks: a long sequence's K^2 pairs cost one product."""
        tasks = self.allocated_tasks if tasks is None else [self._check_allocated(t) for t in tasks]
        masks = (self.engram_masks.numpy()[tasks] > 0.5).astype(np.float64)
        return masks @ masks.T / self.units

    # ------------------------------------------------------------------- forward
    def call(self, inputs, training=None, task=None, mode=_TASK_MODE):
        """Args:
            inputs: (batch, features).
            training: batch statistics and stochastic reactivation if True.
            task: None (the active task), an int, or an int tensor of shape (batch,)
                giving each sample's engram.
            mode: "task" gates by `task`; "union" gates by the union of all allocated
                engrams (inference without task id; `task` is ignored).
        """
        training = _static_training_flag(training)
        z = self.dense(inputs)
        gate = self._engram_gate(task, mode)  # (batch, units) or (units,)
        out = self._normalize_and_sign(z, gate, training)
        if training:
            gate = gate * self._reactivation(tf.shape(z)[0])
            self.activation_rate.assign(tf.reduce_mean(tf.broadcast_to(gate, tf.shape(z))))
        return out * gate

    def call_with_deviation(self, inputs, task):
        """Inference with task inference's evidence: returns `(outputs, deviation)`,

        ```
        deviation = sum_i E_i (z_i - mu_i)^2 / (var_i + eps) / sum_i E_i
        ```

        the mean squared standardized pre-activation over the engram's units, against
        the moving statistics that only that engram's task updated: how strongly the
        input excites the engram. Measured on Split MNIST, an engram's own task excites
        it *more* than other tasks do (its units are discriminative for that task and
        swing widely on it, while foreign inputs leave them near their mean), so the
        largest deviation, not the smallest, identifies the task (`EngramModel`'s
        "excitation" confidence).
        """
        z = self.dense(inputs)
        gate = self._engram_gate(task, _TASK_MODE)
        out = self._normalize_and_sign(z, gate, training=False) * gate
        standardized = self.standardized_square(z, self.moving_mean, self.moving_variance)
        gate = tf.broadcast_to(gate, tf.shape(z))
        deviation = tf.reduce_sum(standardized * gate, axis=-1) / tf.maximum(tf.reduce_sum(gate, axis=-1), 1.0)
        return out, deviation

    # ------------------------------------------------- engram-restricted execution
    def engram_units(self, task):
        """The indices of E_task's units, increasing (an int32 tensor, computed in-graph
        from the bank, so a compiled function follows `begin_task` without retracing)."""
        mask = tf.gather(self.engram_masks, tf.cast(task, tf.int32))
        return tf.cast(tf.where(mask > 0.5)[:, 0], tf.int32)

    def engram_blocks(self, units, input_units=None):
        """The trainable entries the engram `units` uses, as `Block`s: the kernel block
        W[input_units, units] (all inputs when `input_units` is None), gamma[units] and
        beta[units]."""
        return [
            Block(self.dense.kernel, input_units, units),
            Block(self.gamma, units),
            Block(self.beta, units),
        ]

    def call_engram(self, inputs, units, weights, training=False, frozen=None):
        r"""The layer computed on the engram's units only.

        `inputs` are the inputs this engram sees (for a layer after another
        `EngramDense`: that layer's engram outputs), `weights` the gathered
        `engram_blocks` (kernel block, gamma, beta). Returns `(outputs, z)`, both of
        shape (batch, |units|): the outputs are exactly the masked `call`'s outputs at
        `units` (every other unit is 0 there), and z the pre-BatchNorm activations.
        Training updates the moving statistics of `units` only, draws the reactivation
        g from the same stream as `call` and records the activation rate over all N
        units, so both paths leave the layer in the same state.

        `frozen` (optional, (|units|,) 0/1): units that another engram uses and that
        are protected (`EngramProtection`): while training they are normalized by their
        moving statistics, as at inference, and those statistics are not updated.
        """
        training = _static_training_flag(training)
        kernel, gamma, beta = weights
        x = inputs
        if self.dense.input_quantizer is not None:
            x = self.dense.input_quantizer(x)
        if self.dense.kernel_quantizer is not None:
            kernel = self.dense.kernel_quantizer(kernel)
        z = tf.matmul(x, kernel)
        if training:
            mean, variance = tf.nn.moments(z, axes=[0])
            index, n = units[:, None], tf.constant([self.units])
            trained = tf.ones_like(mean) if frozen is None else 1.0 - frozen
            self._update_moving_statistics(tf.scatter_nd(index, mean, n), tf.scatter_nd(index, variance, n),
                                           tf.scatter_nd(index, trained, n))
            if frozen is not None:
                mean = tf.where(frozen > 0.5, tf.gather(self.moving_mean, units), mean)
                variance = tf.where(frozen > 0.5, tf.gather(self.moving_variance, units), variance)
        else:
            mean = tf.gather(self.moving_mean, units)
            variance = tf.gather(self.moving_variance, units)
        out = self.normalized_sign(z, mean, variance, gamma, beta)
        if training:
            g = self._reactivation(tf.shape(z)[0])
            if g.shape.rank:  # (batch, N) draws, read at the engram's units
                g = tf.gather(g, units, axis=1)
            active = tf.reduce_sum(tf.broadcast_to(g, tf.shape(z)))
            total = tf.cast(tf.shape(z)[0] * self.units, active.dtype)
            self.activation_rate.assign(active / total)
            out = out * g
        return out, z

    def engram_deviation(self, z, units):
        """`call_with_deviation`'s deviation from the engram's pre-activations `z`
        (batch, |units|): the mean over the engram of (z - mu)^2 / (var + eps)."""
        mean = tf.gather(self.moving_mean, units)
        variance = tf.gather(self.moving_variance, units)
        standardized = self.standardized_square(z, mean, variance)
        count = tf.cast(tf.maximum(tf.size(units), 1), standardized.dtype)
        return tf.reduce_sum(standardized, axis=-1) / count

    def normalized_sign(self, z, mean, variance, gamma, beta):
        """sign(gamma (z - mean) / sqrt(variance + eps) + beta): BatchNorm with the given
        statistics, then the activation quantizer (all broadcast against z)."""
        y = tf.nn.batch_normalization(z, mean, variance, beta, gamma, self.epsilon)
        return self.activation_quantizer(y) if self.activation_quantizer else y

    def standardized_square(self, z, mean, variance):
        """(z - mean)^2 / (variance + eps): the excitation of each unit."""
        return tf.square(z - mean) / (variance + self.epsilon)

    def _normalize_and_sign(self, z, gate, training):
        """BatchNorm (batch statistics and masked moving updates when training) + sign."""
        if training:
            mean, variance = tf.nn.moments(z, axes=[0])
            self._update_moving_statistics(mean, variance, gate if gate.shape.rank == 1 else tf.reduce_max(gate, axis=0))
        else:
            mean, variance = self.moving_mean, self.moving_variance
        return self.normalized_sign(z, mean, variance, self.gamma, self.beta)

    def _update_moving_statistics(self, mean, variance, trained):
        """Keras' BatchNorm update, on the trained units only (`trained`: (N,) 0/1):
        moving <- moving - (1 - momentum) trained (moving - batch statistic)."""
        decay = (1.0 - self.momentum) * trained
        self.moving_mean.assign_sub((self.moving_mean - mean) * decay)
        self.moving_variance.assign_sub((self.moving_variance - variance) * decay)

    def _engram_gate(self, task, mode):
        if mode == _UNION_MODE:
            return tf.reduce_max(self.engram_masks * self.allocated[:, None], axis=0)
        if mode != _TASK_MODE:
            raise ValueError(
                f"EngramDense: `mode` must be {_TASK_MODE!r} or {_UNION_MODE!r}, got {mode!r}."
            )
        if task is None:  # the active engram (EngramModel refuses to run without one)
            return tf.gather(self.engram_masks, self.active_task)
        if isinstance(task, (int, np.integer)):
            self._check_task(task)  # static; the allocation is checked in-graph below
        task = tf.cast(tf.convert_to_tensor(task), tf.int32)
        # An unallocated engram's mask is all zeros: gating by it would turn the whole
        # layer off and look like a trained network with a constant output.
        tf.debugging.assert_greater(
            tf.gather(self.allocated, task), 0.5,
            message=f"EngramDense {self.name!r}: gated by a task id that has no engram yet; "
                    f"allocate it first (model.begin_task(t)).")
        return tf.gather(self.engram_masks, task)

    def _reactivation(self, batch_size):
        """g ~ Bernoulli(q) per (sample, unit), stateless and keyed by (seed, step)."""
        q = self.activation_probability
        if q >= 1.0:
            return tf.ones((), self.compute_dtype)
        step = self.reactivation_step.assign_add(1)
        seed = tf.stack([tf.constant(self.seed, tf.int64), step])
        replica = tf.distribute.get_replica_context()
        if replica is not None and replica.num_replicas_in_sync > 1:
            # Each replica draws for its own samples, from one shared (seed, step) key.
            seed = tf.random.experimental.stateless_fold_in(
                seed, replica.replica_id_in_sync_group
            )
        draws = tf.random.stateless_uniform((batch_size, self.units), seed=seed)
        g = tf.cast(draws < q, self.compute_dtype)
        return g / q if self.rescale_reactivation else g

    # --------------------------------------------------------------- bookkeeping
    def _check_built(self):
        if not self.built:
            raise RuntimeError(
                f"EngramDense {self.name!r} is not built yet: call it on an input (or "
                f"build the model) before using its engram bank."
            )

    def _check_task(self, task):
        if isinstance(task, (bool, np.bool_)) or not isinstance(task, (int, np.integer)):
            raise ValueError(f"EngramDense: a task id must be an int, got {task!r}.")
        task = int(task)
        if not 0 <= task < self.max_tasks:
            raise ValueError(
                f"EngramDense {self.name!r}: task {task} is outside [0, max_tasks="
                f"{self.max_tasks}); grow the bank first (`layer.grow({task + 1})`; an EngramModel's "
                f"`begin_task` does it) or build it with more, `EngramDense(..., max_tasks={task + 1})`."
            )
        self._check_built()
        return task

    def _check_allocated(self, task):
        task = self._check_task(task)
        if not self.is_allocated(task):
            raise ValueError(
                f"EngramDense {self.name!r}: task {task} has no engram yet; allocate it "
                f"first (`layer.allocate({task})` or `model.begin_task({task})`)."
            )
        return task

    def compute_output_shape(self, input_shape):
        return tf.TensorShape(input_shape)[:-1].concatenate([self.units])

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            "max_tasks": self.max_tasks,
            "engram_fraction": self.engram_fraction,
            "activation_probability": self.activation_probability,
            "excitability": self.excitability,
            "rescale_reactivation": self.rescale_reactivation,
            "seed": self.seed,
            "input_quantizer": lq.quantizers.serialize(self.dense.input_quantizer),
            "kernel_quantizer": lq.quantizers.serialize(self.dense.kernel_quantizer),
            "kernel_initializer": tf.keras.initializers.serialize(
                self.dense.kernel_initializer
            ),
            "kernel_constraint": tf.keras.constraints.serialize(self.dense.kernel_constraint),
            "activation_quantizer": lq.quantizers.serialize(self.activation_quantizer),
            "momentum": self.momentum,
            "epsilon": self.epsilon,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("input_quantizer", "kernel_quantizer", "activation_quantizer"):
            config[key] = lq.quantizers.get(config.get(key))
        config["kernel_initializer"] = tf.keras.initializers.get(config["kernel_initializer"])
        config["kernel_constraint"] = tf.keras.constraints.get(config.get("kernel_constraint"))
        return cls(**config)


def _static_training_flag(training):
    """Keras passes `training` as a Python bool (or None); a constant tensor is accepted."""
    if training is None:
        training = tf.keras.backend.learning_phase()
    if tf.is_tensor(training):
        value = tf.get_static_value(training)
        if value is None:
            raise ValueError(
                "EngramDense needs a Python bool (or constant) for `training`, got a "
                "tensor whose value is only known at run time."
            )
        training = value
    return bool(training)
