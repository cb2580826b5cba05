"""Model builders: the engram BNN, the plain BNN and the full-precision MLP.

All three share the backbone of docs/method.md, section 1: dense layers of the same widths,
a `classes`-way output whose values are the logits (train with
`SparseCategoricalCrossentropy(from_logits=True)`).
"""

import logging

import larq as lq
import numpy as np
import tensorflow as tf

from larq_engrams.arguments import check_choice, check_positive_int, check_positive_ints
from larq_engrams.capacity import add_engram_rows_weight, grow_rows
from larq_engrams.optimizers import as_readable_adam
from larq_engrams.protocol import gradient_step, model_inputs
from larq_engrams.task_inputs import split_task_inputs
from larq_engrams.subnetwork import EngramSlots, EngramSubnetwork, InferenceBlockCache
from larq_engrams.task_free import DEFAULTS as TASK_FREE_DEFAULTS, TaskFreeEngrams
from larq_engrams.task_inference import (
    CLASS_COVARIANCES,
    DEFAULT_FEATURES,
    DEFAULT_PATCH_FLOOR,
    DEFAULT_SHRINKAGE,
    MAX_FEATURES,
    EngramTaskInference,
    InputDiscriminant,
    check_patch_floor,
    resolve_feature_map,
)
from larq_engrams.layers import (
    EngramDense,
    engram_fraction_for,
    default_kernel_initializer,
    default_kernel_quantizer,
)

__all__ = ["EngramModel", "engram_bnn", "bnn", "mlp", "INFERENCE_MODES"]

log = logging.getLogger(__name__)

INFERENCE_MODES = ("task", "union", "infer")
CONFIDENCE_MEASURES = ("input_lda", "excitation", "max_softmax", "entropy")
EXECUTION_MODES = ("sparse", "masked")


@tf.keras.utils.register_keras_serializable(package="larq_engrams")
class EngramModel(tf.keras.Model):
    r"""A binarized MLP whose hidden layers are `EngramDense` layers sharing task ids.

    ```
    h_0 = flatten(x)
    h_l = sign(BN_l(QuantDense_l(h_{l-1}))) * E_t^l * g^l        l = 1..L  (EngramDense)
    logits = BN_out(QuantDense_out(h_L))
    ```

    Use it like any Keras model, one `fit` per task:

    ```python
    model = engram_bnn((28, 28), 10, hidden=(2048, 2048), max_tasks=5)
    model.begin_task(0)            # allocate E_0 in every layer, train/evaluate task 0
    model.compile(optimizer=MetaplasticAdam(0.005), loss=..., metrics=["accuracy"])
    model.fit(task0_data)
    model.begin_task(1)
    model.fit(task1_data)
    model.set_inference("task", task=0); model.evaluate(task0_test)   # task id known
    model.set_inference("infer"); model.evaluate(any_test)           # no task id
    ```

    Inference modes (`set_inference`), all deterministic:
      - "task": gate every layer by E_task (default: the active task).
      - "union": gate by the union of the allocated engrams (no task id).
      - "infer": no task id. For every allocated engram s the network runs gated by E_s;
        per sample, the engram with the highest confidence is kept and its logits
        returned, restricted (by default) to the classes that engram was trained on
        (recorded from the training labels, `engram_classes`). Confidence measures:
        "input_lda" (default): a streaming linear discriminant on fixed random ReLU
        features f(x) of the inputs (`lda_features` of them; None: the raw inputs) for
        every (engram, class) group, with one shrunk within-group covariance
        (`lda_shrinkage`; `task_inference.InputDiscriminant`): score_s(x) =
        max_{c in s} mu_{s,c}^T P f(x) - mu_{s,c}^T P mu_{s,c} / 2. Its statistics are
        sums over the inputs, recorded
        by `observe_task_data` (which `fit` and `ContinualTrainer` call at the start of
        each task), exact whatever later engrams learn. The chosen engram's output is
        then a product of experts over its classes c:
        log_softmax(logits)_c + lda_weight * log_softmax_{c in s}(g_{s,c}(x))
        normalized over the engram's classes; the output is these log-probabilities,
        with a total mass of 1e-3 spread over the other classes
        (`task_inference.floored_log_softmax`), so Keras' cross-entropy on "infer"
        outputs is finite and of normal size and the argmax is the engram's best class
        (`lda_weight=0`: the engram's network alone; 1 was chosen on validation data,
        1024-1024, 2 seeds, `experiments/evidence_weight.py`: against 0.2, Permuted MNIST
        10 x 5 ACC 95.0 -> 95.6 %, 50 x 3 95.1 -> 96.0 %, Split MNIST class-IL
        98.4 -> 98.6 %, Split Fashion-MNIST 88.0 -> 88.0 %).
        `lda_class_covariance="task"`: the router's class evidence inside the chosen
        engram, g_{s,c} above, comes instead from the task's own covariance, frozen when
        its data was seen (`InputDiscriminant`, class_covariance).
        `router_shortlist=k`: beyond k engrams only the k whose mean group scores best
        compete (`InputDiscriminant`, shortlist), so routing one input costs K M + k C M
        multiply-adds instead of K C M; None scores every group.
        "excitation": sum over layers of the engram's mean squared standardized
        pre-activation, (z - mu)^2 / (var + eps), against the moving statistics only
        that engram's task updated. "max_softmax": highest max softmax; "entropy":
        lowest entropy. On validation data (Split MNIST / Split Fashion-MNIST,
        class-IL, 1024-1024, 5 epochs per task) they pick the right engram for 96 / 87 %
        ("input_lda") and 51 / 9 % ("excitation") of the samples; the softmax
        measures fail because every engram is confident on inputs it never saw.

    Inputs may be `x` or `(x, task_ids)` with an int tensor of per-sample task ids;
    given ids override the mode (task-incremental evaluation on mixed batches).

    `protect_engrams=True` (the default) freezes, while an engram trains, every weight,
    BatchNorm parameter and statistic that another allocated engram uses
    (`larq_engrams.protection.EngramProtection`): an engram then computes after later
    tasks exactly what it computed when its task ended. `engram_fraction=None` (the
    default) gives each engram min(0.2, 1 / max_tasks) of the units
    (`layers.engram_fraction_for`), so that the engrams fit side by side and protection
    leaves each later engram free units to learn with. `protect_engrams=False` lets later
    tasks retrain what earlier engrams share (the behaviour before protection was the
    default; the masked execution supports only this).

    `router_features="conv"` gives the router random convolutional features of image
    inputs (`task_inference.ConvGeometry`) instead of random projections of the flat
    pixels; `image_shape` says how flat inputs are images (default: the input shape,
    where it has 2 or 3 axes). The default, "auto", is "conv" where there is an image
    shape and "dense" elsewhere (on validation data the router alone gained 3.2 points
    on Split MNIST and 0.9 on Split Fashion-MNIST class-IL; docs/task_inference.md).
    `router_patch_floor` is that map's contrast floor eps (each k x k patch is
    normalized to zero mean and unit variance floored by eps before the filters see it;
    None: not normalized, as before it was chosen on validation).

    `router=False` builds no router: for task-incremental use, where every input comes
    with its task id, "input_lda" is never asked for and its statistics (M x M floats)
    would be kept for nothing. Then "infer" works with the other confidence measures only.

    Mode and the active task change which graph Keras should run, so `begin_task` and
    `set_inference` drop Keras' cached train/test/predict functions; a custom
    `tf.function` that calls the model in "infer" mode must be retraced after a new
    engram is allocated.
    """

    def __init__(
        self,
        input_shape,
        num_classes,
        hidden=(2048, 2048),
        max_tasks=5,
        engram_fraction=None,
        activation_probability=0.9,
        excitability=6.0,
        rescale_reactivation=False,
        seed=0,
        momentum=0.9,
        epsilon=1e-5,
        confidence="input_lda",
        restrict_to_engram_classes=True,
        execution="sparse",
        lda_features=DEFAULT_FEATURES,
        lda_shrinkage=DEFAULT_SHRINKAGE,
        lda_weight=1.0,
        lda_class_covariance="shared",
        router_shortlist=None,
        inference_mode="task",
        inference_task=None,
        router=True,
        protect_engrams=True,
        router_features="auto",
        image_shape=None,
        router_patch_floor=DEFAULT_PATCH_FLOOR,
        task_free=None,
        **kwargs,
    ):
        kwargs.setdefault("name", "engram_bnn")
        super().__init__(**kwargs)
        self.sample_shape = check_positive_ints("input_shape", input_shape)
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.hidden = check_positive_ints("hidden", hidden)
        self.confidence = check_choice("confidence", confidence, CONFIDENCE_MEASURES)
        self.restrict_to_engram_classes = bool(restrict_to_engram_classes)
        self.execution = check_choice("execution", execution, EXECUTION_MODES)
        self.protect_engrams = bool(protect_engrams)
        unknown = set(task_free or {}) - set(TASK_FREE_DEFAULTS)
        if unknown:
            raise ValueError(f"EngramModel: task_free takes {sorted(TASK_FREE_DEFAULTS)}, not {sorted(unknown)}.")
        self.task_free = dict(task_free or {})
        self._stream = None
        if self.protect_engrams and self.execution != "sparse":
            raise ValueError("EngramModel: protect_engrams=True (the default) freezes blocks of the sparse step; "
                             "use execution='sparse' (the default), or protect_engrams=False with 'masked'.")
        self._engram_args = dict(
            max_tasks=max_tasks,
            engram_fraction=engram_fraction_for(max_tasks) if engram_fraction is None else engram_fraction,
            activation_probability=activation_probability,
            excitability=excitability,
            rescale_reactivation=rescale_reactivation,
            momentum=momentum,
            epsilon=epsilon,
        )
        self.seed = int(seed)
        self.flatten = tf.keras.layers.Flatten(name="flatten")
        # Only the first layer sees real inputs; later ones take the ternary {-1, 0, +1}
        # outputs as they are (re-quantizing would turn silent zeros into +1).
        self.engram_layers = [
            EngramDense(units, seed=self.seed + 1000 * i, name=f"hidden_{i}", **self._engram_args)
            for i, units in enumerate(self.hidden)
        ]
        self.classifier = lq.layers.QuantDense(
            self.num_classes,
            use_bias=False,
            input_quantizer=None,
            kernel_quantizer=default_kernel_quantizer(),
            kernel_initializer=default_kernel_initializer(),
            name="output",
        )
        self.classifier_norm = tf.keras.layers.BatchNormalization(
            momentum=momentum, epsilon=epsilon, name="output_bn"
        )
        # What `set_inference` chose: part of the config, so a loaded model predicts as
        # the saved one did (the task is checked against the engrams when used).
        self._inference_mode = check_choice("inference_mode", inference_mode, INFERENCE_MODES)
        self._inference_task = None if inference_task is None else int(inference_task)
        self.engram_slots = EngramSlots(self)  # sparse training's optimizer-slot lifecycle
        self._inference_blocks = InferenceBlockCache()
        self.lda_features = None if lda_features is None else int(lda_features)
        if image_shape is None and len(self.sample_shape) in (2, 3):
            image_shape = self.sample_shape
        self.router_features, self.image_shape = resolve_feature_map(router_features, image_shape)
        self.router_patch_floor = check_patch_floor(router_patch_floor)
        self.lda_shrinkage = float(lda_shrinkage)
        if not float(lda_weight) >= 0.0:
            raise ValueError(f"`lda_weight` must be >= 0, got {lda_weight!r}.")
        self.lda_weight = float(lda_weight)
        self.lda_class_covariance = check_choice("lda_class_covariance", lda_class_covariance, CLASS_COVARIANCES)
        self.router_shortlist = check_positive_int("router_shortlist", router_shortlist, allow_none=True)
        inputs = int(np.prod(self.sample_shape))
        # The discriminant keeps M x M statistics (M = lda_features, or the inputs' size
        # without random features): built unless M is too large for it and it is not
        # asked for (then building it raises a clear error).
        self.router = bool(router)
        self.task_discriminant = None
        if self.router and ((self.lda_features or inputs) <= MAX_FEATURES or self.confidence == "input_lda"):
            self.task_discriminant = InputDiscriminant(
                max_tasks, self.num_classes, self.lda_features, self.lda_shrinkage,
                seed=self.seed, feature_map=self.router_features,
                image_shape=self.image_shape, class_covariance=lda_class_covariance, shortlist=router_shortlist,
                conv_patch_floor=self.router_patch_floor, name="task_discriminant")
            self.task_discriminant.build((None, inputs))
        if self._inference_mode == "infer":
            self._check_confidence_available(self.confidence)
        self.build((None, *self.sample_shape))
        # Which classes each engram was trained on (seen in its training labels): model
        # state, saved with it; "infer" restricts an engram's prediction to them.
        self.engram_classes = add_engram_rows_weight(
            self, "engram_classes", max_tasks, (self.num_classes,), trainable=False,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )
        self._infer_tasks = ()
        self._cache_inference_blocks = True  # off while `save` traces the model
        self.task_inference = EngramTaskInference(self)  # "infer" mode: which engram answers

    # ------------------------------------------------------------- task control
    @property
    def active_task(self):
        """The task being trained (and evaluated in "task" mode by default), or None."""
        layer = self.engram_layers[0]
        task = int(layer.active_task.numpy())
        return task if layer.is_allocated(task) else None

    @property
    def allocated_tasks(self):
        return self.engram_layers[0].allocated_tasks

    @property
    def max_tasks(self):
        """How many engrams the model holds now: `max_tasks` as built, more after
        `grow_engrams` (which `begin_task` calls for a task beyond them)."""
        return self.engram_layers[0].max_tasks

    def grow_engrams(self, max_tasks):
        """Room for engrams up to `max_tasks`: every layer's engram bank, the engrams'
        class record and the router's groups get new, empty rows. What the model
        computes for its engrams so far is unchanged; the router keeps its statistics
        and its discriminant. Costs the rows' bytes: per engram, its masks (N floats per
        layer), C floats, and the router's 2 C M + 2 C floats."""
        max_tasks = int(max_tasks)
        if max_tasks <= self.max_tasks:
            return
        log.info("EngramModel: %d -> %d engrams.", self.max_tasks, max_tasks)
        for layer in self.engram_layers:
            layer.grow(max_tasks)
        grow_rows(self.engram_classes, max_tasks)
        if self.task_discriminant is not None:
            self.task_discriminant.grow(max_tasks)
        self._reset_compiled_functions()

    @property
    def inference_mode(self):
        return self._inference_mode

    def begin_task(self, task):
        """Allocates engram `task` in every layer if it is new and makes it active.

        The active task is the one `fit` trains; "task" inference mode follows it
        unless `set_inference("task", task=k)` fixed another one. A task at or beyond
        `max_tasks` first grows the model to `task + 1` engrams (`grow_engrams`).
        """
        self.flush_engram_slots(end_of_task=True)
        if isinstance(task, (int, np.integer)) and not isinstance(task, bool) and task >= self.max_tasks:
            self.grow_engrams(task + 1)
        for layer in self.engram_layers:
            if not layer.is_allocated(task):
                layer.allocate(task)
            layer.set_active_task(task)
        self._reset_compiled_functions()

    def _check_confidence_available(self, confidence):
        """A one-line ValueError when `confidence` is "input_lda" and there is no router."""
        if confidence != "input_lda" or self.task_discriminant is not None:
            return
        if not self.router:
            raise ValueError("EngramModel: confidence 'input_lda' needs the router, which this model was built "
                             "without (router=False); pass router=True, or use 'excitation'.")
        raise ValueError(f"EngramModel: confidence 'input_lda' keeps an M x M covariance; "
                         f"M = {self.lda_features or int(np.prod(self.sample_shape))} exceeds "
                         f"{MAX_FEATURES}. Use fewer `lda_features` or 'excitation'.")

    def _check_has_engrams(self):
        """A one-line ValueError, eagerly, when "infer" has no engram to choose from."""
        if not self.allocated_tasks:
            raise ValueError("EngramModel: 'infer' chooses among the trained engrams and this model has none; "
                             "call `model.begin_task(0)` and train (`fit`) the first task before inferring.")

    def set_inference(self, mode, task=None, confidence=None):
        """Selects how the model gates its units when not training.

        Args:
            mode: "task", "union" or "infer" (see the class docstring).
            task: with "task", the engram to use (default: follow the active task).
            confidence: with "infer", how engrams compete: "max_softmax", "entropy" or
                "excitation" (default: keep the model's `confidence`).
        """
        mode = check_choice("mode", mode, INFERENCE_MODES)
        if confidence is not None:
            confidence = check_choice("confidence", confidence, CONFIDENCE_MEASURES)
        self._check_confidence_available(confidence or (self.confidence if mode == "infer" else None))
        if mode == "infer":
            self._check_has_engrams()
        if confidence is not None:
            self.confidence = confidence
        if task is not None:
            if mode != "task":
                raise ValueError(f"set_inference: `task` is only used with mode 'task', not {mode!r}.")
            self.engram_layers[0]._check_allocated(task)
            task = int(task)
        self._inference_mode, self._inference_task = mode, task
        self._reset_compiled_functions()

    def engram_masks(self, task):
        """`{layer name: E_task}` (boolean arrays)."""
        return {layer.name: layer.engram_mask(task) for layer in self.engram_layers}

    def set_weights(self, weights):
        super().set_weights(weights)
        self._inference_blocks.invalidate()

    def load_weights(self, *args, **kwargs):
        status = super().load_weights(*args, **kwargs)
        self._inference_blocks.invalidate()
        return status

    def build(self, input_shape):
        # Keras builds by calling the model, which must then create every weight
        # whatever inference mode a loaded config names ("infer" needs engrams).
        mode, task = self._inference_mode, self._inference_task
        self._inference_mode, self._inference_task = "task", None
        try:
            super().build(input_shape)
        finally:
            self._inference_mode, self._inference_task = mode, task

    def save(self, *args, **kwargs):
        """Keras' `save`. A SavedModel (`save_format="tf"`) traces the model without the
        "infer" kernel-block cache, transient state that must not be exported; use this
        method rather than `tf.saved_model.save(model)` for an EngramModel."""
        self._cache_inference_blocks = False
        try:
            return super().save(*args, **kwargs)
        finally:
            self._cache_inference_blocks = True

    def make_test_function(self, force=False):
        if self.test_function is None or force:
            self._infer_tasks = tuple(self.allocated_tasks)  # e.g. after loading weights
            if self._inference_mode == "infer":
                self._check_has_engrams()  # before tracing: one line, not a graph traceback
        return super().make_test_function(force)

    def make_predict_function(self, force=False):
        if self.predict_function is None or force:
            self._infer_tasks = tuple(self.allocated_tasks)
            if self._inference_mode == "infer":
                self._check_has_engrams()
        return super().make_predict_function(force)

    def inference_tasks(self):
        """The engrams "infer" mode chooses among: the allocated ones, as of the last
        trace when called while tracing (the graph holds one branch per engram)."""
        return tuple(self.allocated_tasks) if tf.executing_eagerly() else self._infer_tasks

    def inference_block_cache(self):
        """The stacked engrams' kernel blocks kept between "infer" calls, or None while
        `save` traces the model (transient state must not be exported)."""
        return self._inference_blocks if self._cache_inference_blocks else None

    def _reset_compiled_functions(self):
        # The graph depends on the mode and, in "infer", on the allocated tasks: take
        # them here, eagerly, and make Keras retrace.
        self._inference_blocks.invalidate()
        self._infer_tasks = tuple(self.allocated_tasks)
        self.train_function = self.test_function = self.predict_function = None

    def make_train_function(self, force=False):
        if self.active_task is None:
            raise RuntimeError(
                "EngramModel: no active task. Call `model.begin_task(t)` before training "
                "on task t."
            )
        return super().make_train_function(force)

    def observe_labels(self, labels):
        """Records the classes in `labels` as trained by the active engram (in-graph;
        called by `train_step` and by `ContinualTrainer` at every training step)."""
        self._inference_blocks.invalidate()  # a training step: the weights change
        seen = tf.reduce_max(tf.one_hot(tf.cast(labels, tf.int32), self.num_classes), axis=0)
        task = self.engram_layers[0].active_task
        row = tf.maximum(tf.gather(self.engram_classes, task), seen)
        # A whole-variable assignment (a sliced one would miss mirrored replicas).
        self.engram_classes.assign(tf.tensor_scatter_nd_update(self.engram_classes, [[task]], [row]))

    def observe_task_data(self, data, y=None, batch_size=1000, refresh=True, task=None):
        """Records the inputs of the active engram's task for task inference
        (`EngramTaskInference.observe`; `fit` and `ContinualTrainer` call it at the
        task's start). Data observed twice counts twice.

        Args:
            data: a `tf.data.Dataset` of `(x, y)`, `((x, task_ids), y)` or
                `(x, y, sample_weight)` batches, or an array of inputs with `y`.
            y: the labels when `data` is an array.
            batch_size: the batches the router observes, of arrays and datasets alike
                (a dataset is rebatched: each batch costs an M x M update, so the
                router's pass is faster in large batches than in training batches).
            refresh: recompute the discriminant afterwards (an M x M solve); False
                leaves it to a later `task_discriminant.refresh()`.
            task: the engram whose groups take the data (default: the active one).
        """
        self.task_inference.observe(data, y, batch_size, refresh, task)

    # ------------------------------------------------ task-free streams
    # (`larq_engrams.task_free`: the model opens its engrams itself; `StreamTrainer`)
    def begin_stream(self):
        """Starts deciding its own task boundaries (`TaskFreeEngrams`, with the
        `task_free` settings) from the active engram on."""
        self._stream = TaskFreeEngrams(self, **self.task_free)

    def _stream_policy(self):
        if self._stream is None:
            raise RuntimeError("EngramModel: call `begin_stream()` before routing stream batches.")
        return self._stream

    def route_stream_batch(self, x, y, told=None):
        """The batches of a stream to train now on the active engram, and whether it
        changed (`TaskFreeEngrams.route`). `told`: a task id the stream gives (its
        engram is made active by `begin_task`): the batch is taken as it comes."""
        policy = self._stream_policy()
        if told is not None:
            return policy.take(x, y), False
        return policy.route(x, y)

    def end_stream_segment(self):
        self._stream_policy().end_segment()

    def finish_stream(self):
        return self._stream_policy().finish()

    def stream_report(self):
        return self._stream_policy().report()

    # ------------------------------------------------ the continual protocol
    # (`larq_engrams.protocol`: what ContinualTrainer, its step and the evaluator call)
    takes_task_ids = True  # task-IL inputs `(x, task_ids)` gate per sample
    stochastic_in_training = True  # reactivation: no evaluation in training mode

    @property
    def compiles_step(self):
        """XLA cannot compile the sparse step: its shapes depend on the engram."""
        return self.execution != "sparse"

    def begin_epoch(self, optimizer):
        self.load_engram_slots(optimizer)  # compact optimizer moments (a no-op if loaded)

    def end_epoch(self):
        self.flush_engram_slots()

    def end_task(self, task):
        self.flush_engram_slots(end_of_task=True)

    def continual_train_step(self, x, y, loss_fn, optimizer, task_ids=None):
        """One step of the active engram: its labels recorded (`observe_labels`), then
        its sub-network trained (`train_engram`; the masked network with
        `execution="masked"`). Returns `(logits, loss)`."""
        self.observe_labels(y)
        if self.execution != "sparse":
            return gradient_step(self, model_inputs(self, x, task_ids), loss_fn, optimizer)
        if task_ids is not None:  # training gates by the active engram, not by the ids
            tf.debugging.assert_equal(
                tf.cast(task_ids, tf.int32), self.engram_layers[0].active_task,
                message="EngramModel trains its active engram: every task id in a training "
                        "batch must equal it (call begin_task).")
        return self.train_engram(x, loss_fn, optimizer)

    def train_step(self, data):
        x, y, sample_weight = tf.keras.utils.unpack_x_y_sample_weight(data)
        self.observe_labels(y)
        if self.execution != "sparse":  # Keras' step, with the metrics ranked as evaluated
            with tf.GradientTape() as tape:
                logits = self(x, training=True)
                loss = self.compute_loss(x, y, logits, sample_weight)
            self.optimizer.minimize(loss, self.trainable_variables, tape=tape)
            return self.compute_metrics(x, y, self.logits_as_evaluated(logits), sample_weight)
        x, _ = split_task_inputs(x)  # training always gates by the active engram

        def loss_fn(logits):
            return self.compute_loss(x, y, logits, sample_weight)

        logits, _ = self.train_engram(x, loss_fn, self.optimizer)
        return self.compute_metrics(x, y, self.logits_as_evaluated(logits), sample_weight)

    def logits_as_evaluated(self, logits, task=None):
        """Training logits as "infer" evaluation ranks them once it has picked the
        active engram (or engram `task`): with `restrict_to_engram_classes`, the
        classes outside the engram's (`engram_classes`, recorded from its labels) at
        -1e9. Training accuracy (`fit`'s metrics, `ContinualTrainer`'s progress) then
        measures what evaluation does: in class-IL, the engram's choice among its own
        classes, not among every class the output layer has. The loss is left as trained."""
        if not self.restrict_to_engram_classes:
            return logits
        task = self.engram_layers[0].active_task if task is None else task
        allowed = tf.gather(self.engram_classes, task) > 0.5
        allowed = tf.logical_or(allowed, tf.logical_not(tf.reduce_any(allowed)))
        return tf.where(allowed, logits, tf.constant(-1e9, logits.dtype))

    # ------------------------------------------- sparse training (`EngramSlots`)
    def train_engram(self, x, loss_fn, optimizer):
        """One optimizer step on the active engram's sub-network (sparse execution):
        forward and backward over the engram's blocks of the weights, and an update of
        those blocks of the weights and optimizer slots only (`EngramSubnetwork`,
        `apply_block_gradients`). `loss_fn(logits)` returns the loss. Returns
        `(logits, loss)`."""
        return self.engram_slots.train(x, loss_fn, optimizer)

    def load_engram_slots(self, optimizer):
        """Starts an epoch of sparse training: gathers the active engram's blocks of
        the optimizer's moments into a compact `BlockSlotCache`, which the steps then
        update instead of the full slots (`flush_engram_slots` writes them back).
        `fit` and `ContinualTrainer` do this around every epoch. A no-op unless the
        steps can be block sparse (`can_cache_engram_slots`)."""
        return self.engram_slots.load(optimizer)

    @property
    def slot_cache(self):
        """The `BlockSlotCache` of sparse training (compact moments and weight blocks)."""
        return self.engram_slots.cache

    def can_cache_engram_slots(self, optimizer, any_task=False):
        """Whether steps of the active engram (`any_task`: of whichever engram will
        be active) can be block sparse with `optimizer`'s moments held compact: sparse
        execution, an active engram, Adam or `MetaplasticAdam` without clipping or
        weight decay, no `model.losses` penalties, one replica."""
        return self.engram_slots.can_cache(optimizer, any_task)

    def engram_block_variables(self):
        """The trainable variables that sparse execution only ever updates by blocks
        of rows or columns: those whose optimizer slots `build_task_optimizer` leaves out."""
        return self.engram_slots.block_variables()

    def build_task_optimizer(self, optimizer):
        """Builds a fresh `optimizer` for one task of sparse training with *task-scoped
        moments*: it gets slots only for the variables outside `engram_block_variables`,
        and the Adam moments of the engram's blocks live only in the compact cache
        (`load_engram_slots`), from the task's first step to its end (`begin_task`
        discards them). At 784-2048-2048-10 and rho = 0.2 this keeps ~0.5 M moments
        instead of 2 x 5.8 M.

        Exactly the state a fresh optimizer would have: a new task's moments start at
        zero, and inside the task the compact moments are the only ones that change.
        For an optimizer kept across tasks (or one without a block rule), build it
        on every variable instead. Returns whether the moments are task-scoped (not so
        when steps cannot use the cache, or when the optimizer was built before on
        every variable).
        """
        return self.engram_slots.build_task_optimizer(optimizer)

    def flush_engram_slots(self, end_of_task=False):
        """Writes the compact moments back into the optimizer's slots (if loaded) and
        closes the cache. Task-scoped moments (`build_task_optimizer`) have no slots to
        go to: they stay loaded until the task ends (`end_of_task=True`, or
        `begin_task`), and are dropped then."""
        self.engram_slots.flush(end_of_task)

    def compile(self, optimizer="rmsprop", **kwargs):
        """`tf.keras.Model.compile`; a stock Adam (`"adam"` included) becomes this package's
        `Adam`, the same optimizer whose moments sparse execution can update by blocks."""
        super().compile(optimizer=as_readable_adam(tf.keras.optimizers.get(optimizer)), **kwargs)

    def compile_from_config(self, config):
        """Compiles a loaded model as it was saved (Keras calls this in `load_model`):
        the loss, metrics and optimizer of `get_compile_config`. Keras' own version
        declines for a model whose `compile` is overridden; this one is that override's
        twin, so a loaded model evaluates and goes on training like the saved one.

        The optimizer is built on every trainable variable, so that the saved slots (if
        the optimizer kept any for all of them) load into it; a saved optimizer whose
        moments were task-scoped (`build_task_optimizer`) had none for the engram
        blocks, and their moments start at zero, as the next task's would anyway."""
        self.compile(**tf.keras.saving.deserialize_keras_object(config))
        if isinstance(self.optimizer, tf.keras.optimizers.Optimizer) and self.built:
            self.optimizer.build(self.trainable_variables)

    def fit(self, *args, **kwargs):
        """`tf.keras.Model.fit`, with the optimizer moments of the active engram's
        blocks kept compact during each epoch (sparse execution; see
        `load_engram_slots`). Between epochs and after `fit` the optimizer holds the
        exact state (task-scoped moments, `build_task_optimizer`: the cache does, until
        the next `begin_task`)."""
        args = list(args)
        if len(args) > 5:  # callbacks given by position
            args[5] = [_EngramSlotEpochs(self), *(args[5] or [])]
        else:
            kwargs["callbacks"] = [_EngramSlotEpochs(self), *(kwargs.get("callbacks") or [])]
        self._observe_fit_data(args, kwargs)
        try:
            return super().fit(*args, **kwargs)
        finally:
            self.flush_engram_slots()

    def _observe_fit_data(self, args, kwargs):
        """`observe_task_data` on what `fit` trains on: a dataset, or arrays `x`, `y`
        (without the `validation_split` part)."""
        if self.task_discriminant is None or self.active_task is None:
            return
        x = args[0] if args else kwargs.get("x")
        y = args[1] if len(args) > 1 else kwargs.get("y")
        if isinstance(x, tf.data.Dataset):
            if int(x.cardinality()) == int(tf.data.INFINITE_CARDINALITY):
                log.warning("EngramModel.fit: a repeating dataset is not recorded for task "
                            "inference; call `model.observe_task_data(...)` with one pass over "
                            "this task's data.")
                return
            return self.observe_task_data(x)
        if y is None or isinstance(x, (dict, tf.keras.utils.Sequence)) or callable(getattr(x, "__next__", None)):
            log.warning("EngramModel.fit: inputs of type %s are not recorded for task inference; "
                        "call `model.observe_task_data(...)` for this task.", type(x).__name__)
            return
        x, _ = split_task_inputs(x)
        split = kwargs.get("validation_split", args[8] if len(args) > 8 else 0.0) or 0.0
        n = int(int(tf.shape(x)[0]) * (1.0 - split))  # Keras validates on the last rows
        self.observe_task_data(x[:n], y[:n])

    # ------------------------------------------------------------------ forward
    def __call__(self, *args, **kwargs):
        # Checked here, not in `call`, whose errors Keras wraps in a many-line report.
        if getattr(self, "_inference_mode", None) == "infer" and tf.executing_eagerly():
            self._check_has_engrams()
        return super().__call__(*args, **kwargs)

    def call(self, inputs, training=None):
        x, task_ids = split_task_inputs(inputs)
        training = bool(training) if training is not None else False
        if task_ids is not None:
            return self._forward(x, training, task=tf.cast(task_ids, tf.int32))
        if training:
            return self._forward(x, training)
        if self._inference_mode == "union":
            return self._forward(x, training, mode="union")
        if self._inference_mode == "infer":
            return self.task_inference(x)[0]
        return self._forward(x, training, task=self._inference_task)

    def infer_tasks(self, x):
        """The engram chosen per sample in "infer" mode (an int tensor of task ids)."""
        return self.task_inference(tf.convert_to_tensor(x))[1]

    def _forward(self, x, training, task=None, mode="task"):
        # The first call (Keras' build) creates the weights through the masked path.
        built = all(layer.built for layer in self.engram_layers) and self.classifier.built
        if self.execution == "sparse" and mode == "task" and built:
            return self._sparse_forward(x, training, task)
        return self.masked_forward(x, training, task, mode)

    def _sparse_forward(self, x, training, task):
        """The engram's sub-network; per-sample task ids run it when they all name one
        engram, else the masked network (mixed batches are not the usual case)."""
        if task is None:
            task = self.engram_layers[0].active_task
        task = tf.convert_to_tensor(task)
        if task.shape.rank == 0:
            return EngramSubnetwork(self, task)(x, training=training)
        same = tf.reduce_all(tf.equal(task, task[:1]))  # True for an empty batch too
        return tf.cond(
            tf.logical_and(same, tf.size(task) > 0),
            lambda: EngramSubnetwork(self, task[0])(x, training=training),
            lambda: self.masked_forward(x, training, task),
        )

    def masked_forward(self, x, training, task, mode="task"):
        """The reference: every unit computed, then gated (`EngramDense.call`)."""
        h = self.flatten(x)
        for layer in self.engram_layers:
            h = layer(h, training=training, task=task, mode=mode)
        return self.classifier_norm(self.classifier(h), training=training)

    # ------------------------------------------------------------ serialization
    def state_bytes(self):
        """The continual protocol's `(learn, predict)` bytes: the router's
        (`InputDiscriminant.state_bytes`); none without a router."""
        return (0, 0) if self.task_discriminant is None else self.task_discriminant.state_bytes()

    def get_config(self):
        return {
            "name": self.name,
            "input_shape": list(self.sample_shape),
            "num_classes": self.num_classes,
            "hidden": list(self.hidden),
            "seed": self.seed,
            "confidence": self.confidence,
            "restrict_to_engram_classes": self.restrict_to_engram_classes,
            "execution": self.execution,
            "lda_features": self.lda_features,
            "lda_shrinkage": self.lda_shrinkage,
            "lda_weight": self.lda_weight,
            "lda_class_covariance": self.lda_class_covariance,
            "router_shortlist": self.router_shortlist,
            "inference_mode": self._inference_mode,
            "inference_task": self._inference_task,
            "router": self.router,
            "protect_engrams": self.protect_engrams,
            "router_features": self.router_features,
            "image_shape": None if self.image_shape is None else list(self.image_shape),
            "router_patch_floor": self.router_patch_floor,
            "task_free": dict(self.task_free) or None,
            **self._engram_args,
            "max_tasks": self.max_tasks,
        }

    @classmethod
    def from_config(cls, config):
        # Saved before the router could see images: its features were dense; before the
        # convolutional map normalized its patches; and before engrams were protected.
        return cls(**{"router_features": "dense", "router_patch_floor": None, "protect_engrams": False, **config})


class _EngramSlotEpochs(tf.keras.callbacks.Callback):
    """Loads the compact optimizer moments at each epoch's start, flushes them at its
    end (first in `fit`'s callback list, so later callbacks see exact slots)."""

    def __init__(self, model):
        super().__init__()
        self._engram_model = model

    def on_epoch_begin(self, epoch, logs=None):
        self._engram_model.load_engram_slots(self._engram_model.optimizer)

    def on_epoch_end(self, epoch, logs=None):
        self._engram_model.flush_engram_slots()


def engram_bnn(input_shape, num_classes, hidden=(2048, 2048), max_tasks=5, **kwargs):
    """The engram BNN (engramBNN): an `EngramModel`, built and ready to compile.

    Defaults follow the engram paper's 2048-2048 hidden layers (use 4096-4096 for
    CORe50). Train it with `MetaplasticAdam` for the full method (engrams +
    metaplasticity) or with Adam for engrams alone. Every other argument
    (`engram_fraction`, `activation_probability`, `excitability`, `seed`, `confidence`,
    ...) is `EngramModel`'s; see it for the maths and `EngramDense` for the layer.
    """
    return EngramModel(input_shape, num_classes, hidden=hidden, max_tasks=max_tasks, **kwargs)


def bnn(input_shape, num_classes, hidden=(2048, 2048), momentum=0.9, epsilon=1e-5, name="bnn"):
    r"""The plain Larq BNN of docs/method.md, section 1, as a `tf.keras.Sequential`.

    ```
    h_1 = sign(BN(QuantDense(x)))                       # real-valued pixels in
    h_l = sign(BN(QuantDense(h_{l-1})))                 # the sign is the next layer's
    logits = BN(QuantDense(h_L))                        #   `input_quantizer="ste_sign"`
    ```

    Kernels: `SteSign(clip_value=None)` (identity straight-through, no clipping), no
    biases, uniform init in [-0.05, 0.05]. Hidden layers are named `hidden_{i}` (the
    names `MetaplasticAdam(m={...})` can use), the output `output`.
    """
    layers = [tf.keras.Input(check_positive_ints("input_shape", input_shape)), tf.keras.layers.Flatten()]
    widths = [*check_positive_ints("hidden", hidden), check_positive_int("num_classes", num_classes)]
    for i, units in enumerate(widths):
        last = i == len(widths) - 1
        layers.append(
            lq.layers.QuantDense(
                units,
                use_bias=False,
                input_quantizer=None if i == 0 else "ste_sign",
                kernel_quantizer=default_kernel_quantizer(),
                kernel_initializer=default_kernel_initializer(),
                name="output" if last else f"hidden_{i}",
            )
        )
        layers.append(
            tf.keras.layers.BatchNormalization(
                momentum=momentum, epsilon=epsilon, name="output_bn" if last else f"bn_{i}"
            )
        )
    return tf.keras.Sequential(layers, name=name)


def mlp(input_shape, num_classes, hidden=(2048, 2048), name="mlp"):
    """The full-precision baseline: `Dense(units, relu)` per hidden width, then a
    `Dense(num_classes)` whose outputs are the logits."""
    layers = [tf.keras.Input(check_positive_ints("input_shape", input_shape)), tf.keras.layers.Flatten()]
    for i, units in enumerate(check_positive_ints("hidden", hidden)):
        layers.append(tf.keras.layers.Dense(units, activation="relu", name=f"hidden_{i}"))
    layers.append(
        tf.keras.layers.Dense(check_positive_int("num_classes", num_classes), name="output")
    )
    return tf.keras.Sequential(layers, name=name)
