"""The continual protocol: what the trainer, its train step and the evaluator ask of a
model, with defaults for a plain Keras model.

Keras' contract runs from the model outward: a model's own methods hold its logic, and
the loop calls them. A model takes part in continual training by defining any of the
methods and attributes below (`EngramModel` and `ClassStatisticsClassifier` do); a
plain Keras model defines none and gets the default. The loop reaches a model only
through these functions, so it never asks what class a model is.

| the model defines | called | default |
|---|---|---|
| `check_scenario(scenario)` | before training; raises `ValueError` if it cannot learn it | nothing |
| `begin_task(task)` | before each task, and with task 0 before the untrained model is measured | nothing |
| `observe_task_data(dataset)` | after `begin_task`, when test inputs will come without task ids | nothing |
| `build_task_optimizer(optimizer)` | for an optimizer that is fresh at every task | `optimizer.build(trainable_variables)` |
| `begin_epoch(optimizer)`, `end_epoch()` | around every epoch | nothing |
| `end_task(task)` | after a task's last epoch | nothing |
| `continual_train_step(x, y, loss_fn, optimizer, task_ids)` | every step; returns `(logits, loss)` | `gradient_step` |
| `logits_as_evaluated(logits)` | on each training step's logits, for the training accuracy | the logits |
| `takes_task_ids` | True: called with `(x, task_ids)` when the scenario gives ids | False: `x` |
| `compiles_step` | False: XLA cannot compile its train step | True |
| `set_inference(mode)`, `inference_mode` | evaluation without task ids | nothing |
| `allocated_tasks` | the tasks it has a network for (task-IL evaluates only those) | every task |
| `infer_tasks(x)` | the task it infers per input (task-inference accuracy) | not measured |
| `stochastic_in_training` | True: refuses evaluation in training mode (BatchNorm batch statistics) | False |
| `state_bytes()` | after training, on the model and every callback: `(learn, predict)` bytes | (0, 0) |
| `begin_stream()` | once, before a task-free stream (`StreamTrainer`) | nothing |
| `route_stream_batch(x, y, told)` | each stream batch: `(batches to train now, started another network)` | `([(x, y)], False)` |
| `after_stream_batch(x, y)` | after each trained stream batch (online replay fills its buffer) | nothing |
| `end_stream_segment()` | before the stream is evaluated | nothing |
| `finish_stream()` | at the stream's end: batches still to train | `[]` |
| `stream_report()` | after the stream: what the model decided (its boundaries) | None |

`state_bytes()` counts what a method keeps besides the network's trainable weights (and
BatchNorm's statistics), as held in memory: `learn`, kept only to learn further tasks
(a replay buffer, the router's statistics, EWC's Fisher and anchors, SI's importances
and reference weights, LwF's teacher); `predict`, needed to predict (the router's
inference kernel and sign bits, a class-statistics classifier's discriminant). The
trainer makes a fresh optimizer for every task, so no optimizer slot is kept across
tasks. docs/method.md, section 7, defines it.
"""
import tensorflow as tf

__all__ = [
    "begin_epoch", "begin_task", "build_task_optimizer", "check_scenario", "compiles_step", "end_epoch",
    "end_task", "gradient_step", "begin_stream", "route_stream_batch", "after_stream_batch", "end_stream_segment",
    "finish_stream", "stream_report", "has_networks_for", "infers_tasks", "logits_as_evaluated", "model_inputs",
    "observe_task_data",
    "set_inference", "state_bytes", "stochastic_in_training", "train_on_batch", "variable_bytes",
]


def _call(model, name, *args):
    hook = getattr(model, name, None)
    return None if hook is None else hook(*args)


def check_scenario(model, scenario):
    _call(model, "check_scenario", scenario)


def begin_task(model, task):
    _call(model, "begin_task", task)


def observe_task_data(model, dataset):
    _call(model, "observe_task_data", dataset)


def end_task(model, task):
    _call(model, "end_task", task)


def begin_stream(model):
    _call(model, "begin_stream")


def route_stream_batch(model, x, y, told=None):
    """`(batches, switched)`: what to train now on a stream batch (`told`: the task id,
    only where the stream gives boundaries), and whether the model started another
    network since (a fresh optimizer then). A model without the hook: the batch itself."""
    hook = getattr(model, "route_stream_batch", None)
    return ([(x, y)], False) if hook is None else hook(x, y, told)


def after_stream_batch(model, x, y):
    _call(model, "after_stream_batch", x, y)


def end_stream_segment(model):
    _call(model, "end_stream_segment")


def finish_stream(model):
    return _call(model, "finish_stream") or []


def stream_report(model):
    return _call(model, "stream_report")


def begin_epoch(model, optimizer):
    _call(model, "begin_epoch", optimizer)


def end_epoch(model):
    _call(model, "end_epoch")


def build_task_optimizer(model, optimizer):
    """Builds an optimizer that is fresh at every task: the model's own way if it has
    one (an engram model's task-scoped moments), else on every trainable variable."""
    if getattr(model, "build_task_optimizer", None) is not None:
        model.build_task_optimizer(optimizer)
    else:
        optimizer.build(model.trainable_variables)


def logits_as_evaluated(model, logits):
    """The training logits as evaluation ranks them, so the training accuracy measures
    what evaluation does (an engram model ranks only its engram's classes)."""
    hook = getattr(model, "logits_as_evaluated", None)
    return logits if hook is None else hook(logits)


def compiles_step(model):
    return bool(getattr(model, "compiles_step", True))


def stochastic_in_training(model):
    return bool(getattr(model, "stochastic_in_training", False))


def model_inputs(model, x, task_ids):
    """What the model is called with: `(x, task_ids)` for models that take the ids."""
    if task_ids is not None and getattr(model, "takes_task_ids", False):
        return (x, task_ids)
    return x


def set_inference(model, mode):
    """Sets the model's inference mode for inputs without task ids, if it has modes."""
    if getattr(model, "set_inference", None) is not None and model.inference_mode != mode:
        model.set_inference(mode)


def has_networks_for(model):
    """The tasks the model can be evaluated on with their ids (None: every task)."""
    tasks = getattr(model, "allocated_tasks", None)
    return None if tasks is None else tuple(tasks)


def infers_tasks(model):
    return getattr(model, "infer_tasks", None) is not None


def gradient_step(model, inputs, loss_fn, optimizer):
    """The plain step: `loss_fn(model(inputs, training=True))`, its gradients applied to
    every trainable variable. Returns `(logits, loss)`."""
    with tf.GradientTape() as tape:
        logits = model(inputs, training=True)
        loss = loss_fn(logits)
    variables = model.trainable_variables
    optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
    return logits, loss


def train_on_batch(model, x, y, loss_fn, optimizer, task_ids=None):
    """One step of any model: its `continual_train_step`, or `gradient_step`."""
    step = getattr(model, "continual_train_step", None)
    if step is not None:
        return step(x, y, loss_fn, optimizer, task_ids)
    return gradient_step(model, model_inputs(model, x, task_ids), loss_fn, optimizer)


def variable_bytes(variables):
    """The bytes of `variables` as held: their sizes times their dtypes' sizes."""
    return sum(int(tf.size(v)) * v.dtype.size for v in variables)


def state_bytes(model, callbacks=()):
    """`{"learn": bytes, "predict": bytes}` a method keeps besides its network's weights:
    the sum of `state_bytes()` over the model and its callbacks (see the table above)."""
    learn = predict = 0
    for owner in (model, *callbacks):
        hook = getattr(owner, "state_bytes", None)
        if hook is not None:
            owner_learn, owner_predict = hook()
            learn, predict = learn + int(owner_learn), predict + int(owner_predict)
    return {"learn": learn, "predict": predict}
