"""Metaplastic optimizers for binarized networks (Laborieux et al., Nat. Commun. 2021).

A binary weight is W_b = sign(W_h) of a real hidden weight W_h. The binary weight flips
only when W_h crosses zero, so |W_h| measures how consolidated the binary weight is.
Metaplasticity attenuates every update that would shrink |W_h| by

    f_meta(m, W_h) = 1 - tanh^2(m * |W_h|)          in (0, 1]

so that weights which grew large during earlier tasks become hard to flip, while
updates that grow |W_h| are never attenuated.
"""
import fnmatch
from collections.abc import Mapping

import tensorflow as tf

__all__ = [
    "Adam", "MetaplasticAdam", "adam_hyperparameters", "adam_update", "as_readable_adam", "attenuate",
    "is_binary_kernel", "parse_strength", "variable_keys", "variable_path",
]


def is_binary_kernel(variable) -> bool:
    """The default rule that picks the latent weights metaplasticity acts on.

    True for variables that Larq quantizes to one bit: the `QuantizedVariable` kernels
    of Larq layers with a binary `kernel_quantizer` carry `precision == 1` (the same
    test as Larq's `Bop.is_binary_variable`). BatchNorm parameters, biases and
    full-precision kernels are not binary, so they get the plain base update.
    """
    return getattr(variable, "precision", None) == 1


def variable_path(variable) -> str:
    """A variable's name without the ":0" suffix, e.g. "hidden_0/kernel"."""
    name = variable.name
    return name[: -len(":0")] if name.endswith(":0") else name


def _name_matches(key: str, path: str) -> bool:
    """A mapping key names a variable by its full path, one path component (a layer
    name, e.g. "engram_dense_1"), or a glob over the path ("hidden_*/*")."""
    return key == path or key in path.split("/") or fnmatch.fnmatchcase(path, key)


def variable_keys(variable):
    """The keys under which the optimizers here file what they keep of `variable`: its
    own `ref()`, its latent variable's (Larq's `QuantizedVariable` wraps one) and, under
    a `tf.distribute` strategy, those of its per-device components, which are what
    `update_step` receives. Public API only (`ref()`, `experimental_local_results`)."""
    strategy = tf.distribute.get_strategy()
    keys = []
    for v in (variable, getattr(variable, "latent_variable", variable)):
        keys.append(v.ref())
        keys.extend(c.ref() for c in strategy.experimental_local_results(v))
    return keys


def adam_hyperparameters(optimizer):
    """`(alpha_t, epsilon, beta_1, beta_2)` of `optimizer`'s coming step (an `Adam` of
    this module), float32, with Adam's bias-corrected step size
    alpha_t = lr_t sqrt(1 - beta_2^t) / (1 - beta_1^t)."""
    local_step = tf.cast(optimizer.iterations + 1, tf.float32)
    beta_2_power = tf.pow(tf.cast(optimizer.beta_2, tf.float32), local_step)
    beta_1_power = tf.pow(tf.cast(optimizer.beta_1, tf.float32), local_step)
    learning_rate = tf.cast(optimizer.current_learning_rate(), tf.float32)
    alpha = learning_rate * tf.sqrt(1 - beta_2_power) / (1 - beta_1_power)
    epsilon = tf.constant(optimizer.epsilon, tf.float32)
    if getattr(optimizer, "adaptive_epsilon", False):
        epsilon = epsilon * tf.sqrt(1 - beta_2_power)
    return alpha, epsilon, tf.constant(optimizer.beta_1, tf.float32), tf.constant(optimizer.beta_2, tf.float32)


def adam_update(w, m, v, gradient, strength, alpha, epsilon, beta_1, beta_2, v_hat=None):
    """Adam's step (metaplastic where `strength` is not None), the one formula of the
    package: returns the new `(w, m, v, v_hat)`.

    ```
    m <- m + (g - m)(1 - beta_1);   v <- v + (g^2 - v)(1 - beta_2)
    v_hat <- max(v_hat, v)          (AMSGrad only; it replaces v below)
    w <- w - alpha * d / (sqrt(v) + epsilon),   d = m, or attenuate(w, m, strength)
    ```
    """
    m = m + (gradient - m) * (1 - beta_1)
    v = v + (tf.square(gradient) - v) * (1 - beta_2)
    denominator = v
    if v_hat is not None:
        v_hat = denominator = tf.maximum(v_hat, v)
    direction = m if strength is None else attenuate(w, m, strength)
    return w - (direction * alpha) / (tf.sqrt(denominator) + epsilon), m, v, v_hat


@tf.keras.utils.register_keras_serializable(package="larq_engrams")
class Adam(tf.keras.optimizers.Adam):
    """`tf.keras.optimizers.Adam`, the same steps and config, whose moments can be read.

    tf_keras gives no public way to find an optimizer's slot of a given variable. This
    Adam files each slot as `build` makes it (through the public
    `add_variable_from_reference`), under the variable's `variable_keys`, so that
    `moments(variable)` finds it with public API only, also for the per-device
    components a `tf.distribute` strategy hands to `update_step`. Sparse execution (which
    updates blocks of the moments) and `SynapticIntelligence` (which reads the step's
    gradient from the first moment) need it; `as_readable_adam` turns a stock Adam into
    one, and `EngramModel.compile` does so.
    """

    def __init__(self, learning_rate=0.001, *args, **kwargs):
        super().__init__(learning_rate, *args, **kwargs)
        schedules = tf.keras.optimizers.schedules.LearningRateSchedule
        # Kept here because `learning_rate` only follows a schedule inside `apply_gradients`.
        self.learning_rate_schedule = learning_rate if isinstance(learning_rate, schedules) else None
        # Keras checkpoints the dicts and lists an optimizer holds; these tables are
        # rebuilt by `build`, and the slots are checkpointed as Keras' own variables.
        self.tables = _Tables()

    def add_variable_from_reference(self, model_variable, variable_name, shape=None, initial_value=None):
        slot = super().add_variable_from_reference(model_variable, variable_name, shape=shape,
                                                   initial_value=initial_value)
        for key in variable_keys(model_variable):
            self.tables.slots.setdefault(key, {})[variable_name] = slot
        return slot

    @property
    def built(self):
        """Whether `build` has made slots (for some variables, or all)."""
        return bool(self.tables.slots)

    def has_moments(self, variable):
        """Whether this optimizer holds Adam's moments for `variable` (not so for the
        engram blocks of an optimizer built with task-scoped moments)."""
        return "m" in self.tables.slots.get(variable.ref(), {})

    def moments(self, variable):
        """Adam's `(m, v, v_hat)` slot variables of `variable` (v_hat: None without AMSGrad)."""
        slots = self.tables.slots.get(variable.ref())
        if slots is None or "m" not in slots:
            raise KeyError(f"{type(self).__name__} holds no moments for {variable.name}; it is not built "
                           "for this variable.")
        return slots["m"], slots["v"], slots.get("vhat")

    def current_learning_rate(self):
        """The learning rate of the coming step: the schedule at `iterations`, if any."""
        if self.learning_rate_schedule is not None:
            return self.learning_rate_schedule(self.iterations)
        return self.learning_rate


class _Tables:
    """What `Adam` and `MetaplasticAdam` look up per variable, by `variable_keys`: the
    moment slots, the metaplastic strength; the binary kernels and, in build order,
    every variable's strength (what `get_config` saves). A plain object: not tracked."""

    def __init__(self):
        self.slots = {}
        self.strength = {}
        self.binary_kernels = []
        self.build_strengths = []


def as_readable_adam(optimizer):
    """`optimizer`, or, for a stock `tf.keras.optimizers.Adam` that has no slots yet, the
    same optimizer (from its config) as this module's `Adam`, whose moments can be read."""
    if type(optimizer) is tf.keras.optimizers.Adam and not optimizer.variables[1:]:
        return Adam.from_config(optimizer.get_config())
    return optimizer


@tf.keras.utils.register_keras_serializable(package="larq_engrams")
class MetaplasticAdam(Adam):
    r"""Adam with metaplastic attenuation of the binary kernels' hidden weights.

    For every latent binary kernel W_h, with Adam's moments m_t, v_t and its
    bias-corrected step size alpha_t = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t):

    ```
    shrinks = sign(W_h) * m_t > 0                # the step -alpha_t * m_t moves W_h toward 0
    f_meta  = 1 - tanh^2(m * |W_h|)
    W_h    <- W_h - alpha_t * where(shrinks, f_meta * m_t, m_t) / (sqrt(v_t) + epsilon)
    ```

    Every other variable (BatchNorm, biases, full-precision kernels) gets the plain
    Adam update, and `m = 0` is exactly `tf.keras.optimizers.Adam` (the attenuation is
    skipped, not multiplied by one). At W_h = 0, sign(W_h) = 0: nothing is attenuated.

    Args:
        learning_rate: as in Adam; must be > 0 (or a schedule).
        m: metaplasticity strength, >= 0. A float applies to every binary kernel. A
            mapping `{name: m}` applies per layer or variable: a key matches a binary
            kernel whose variable path equals it, contains it as a component (a layer
            name) or matches it as a glob; binary kernels not named get m = 0. A key
            that names no binary kernel raises `ValueError` when the optimizer is built
            (at the first `apply_gradients`). Typical values: 1.3-1.5 on permuted MNIST.
        beta_1, beta_2, epsilon, amsgrad: as in Adam. Note Keras' epsilon default
            (1e-7) differs from PyTorch's (1e-8) used by the reference implementation.
        binary_kernel_predicate: optional callable `variable -> bool` replacing
            `is_binary_kernel`, the rule that picks the kernels to attenuate. It is not
            serialized: pass it again when deserializing. Subclasses may instead
            override the method `is_binary_kernel`.
        **kwargs: passed to `tf.keras.optimizers.Adam` (`name`, `clipnorm`, ...).

    Example:
    ```python
    opt = MetaplasticAdam(learning_rate=0.005, m={"hidden_0": 1.3, "hidden_1": 1.5})
    model.compile(optimizer=opt, loss=..., metrics=["accuracy"])
    ```
    """

    def __init__(
        self,
        learning_rate=0.001,
        m=1.3,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-7,
        amsgrad=False,
        binary_kernel_predicate=None,
        name="MetaplasticAdam",
        resolved_strengths=None,
        **kwargs,
    ):
        _check_positive_learning_rate(learning_rate)
        self._m = _validate_strength(m)
        self._binary_kernel_predicate = binary_kernel_predicate
        # Set by `from_config`: the strength of each variable in build order, so that a
        # reloaded optimizer does not depend on variable names (Larq layers rebuilt from
        # a config lose their name scope: "hidden_0/kernel" comes back as "kernel").
        self._resolved_strengths = (
            None if resolved_strengths is None else [float(s) for s in resolved_strengths]
        )
        super().__init__(
            learning_rate=learning_rate,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            amsgrad=amsgrad,
            name=name,
            **kwargs,
        )


    @property
    def m(self):
        """The metaplasticity strength: a float or a `{name: float}` mapping."""
        return self._m if isinstance(self._m, float) else dict(self._m)

    def is_binary_kernel(self, variable) -> bool:
        """Whether `variable` is a latent binary kernel that metaplasticity acts on."""
        if self._binary_kernel_predicate is not None:
            return bool(self._binary_kernel_predicate(variable))
        return is_binary_kernel(variable)

    def metaplastic_strength(self, variable) -> float:
        """The m applied to `variable` (0.0 for variables updated by plain Adam)."""
        return self.tables.strength.get(variable.ref(), 0.0)

    def metaplastic_strengths(self) -> dict:
        """`{variable path: m}` for every variable the attenuation acts on (m > 0)."""
        return {
            variable_path(var): self.tables.strength[var.ref()]
            for var in self.tables.binary_kernels
            if self.tables.strength[var.ref()] > 0.0
        }

    def attenuated_fractions(self) -> dict:
        """`{variable path: fraction}`: per attenuated kernel, the fraction of entries whose
        current first moment points toward zero (sign(W_h) * m_t > 0), i.e. whose Adam
        step is being attenuated. Cheap: one elementwise pass; for logging."""
        out = {}
        for var in self.tables.binary_kernels:
            if not self.has_moments(var):
                continue  # task-scoped moments: `BlockSlotCache.attenuated_fractions` has them
            if self.tables.strength[var.ref()] > 0.0:
                hidden = tf.convert_to_tensor(getattr(var, "latent_variable", var))
                m = self.moments(var)[0]
                shrinking = tf.cast(tf.sign(hidden) * m > 0, tf.float32)  # as in attenuate
                out[variable_path(var)] = float(tf.reduce_mean(shrinking))
        return out

    def build(self, var_list):
        super().build(var_list)
        self.resolve_strengths(var_list)

    def resolve_strengths(self, var_list):
        """Resolves m for every variable of `var_list`, in this order (the order
        `get_config` saves); once: later calls, and `build`'s own, do nothing. `build`
        calls it; call it first, with every variable the optimizer will update, when
        the optimizer is built with slots for only some of them (task-scoped moments:
        `EngramModel.build_task_optimizer`)."""
        if getattr(self, "_meta_built", False):
            return
        self._meta_built = True
        self.tables.build_strengths = [0.0] * len(var_list)
        resolved = self._resolved_strengths
        if resolved is not None and len(resolved) != len(var_list):
            raise ValueError(
                f"MetaplasticAdam: the saved per-variable strengths cover {len(resolved)} "
                f"variables but the optimizer is built for {len(var_list)}; the model does "
                f"not match the one it was saved with."
            )
        unmatched = set(self._m) if not isinstance(self._m, float) else set()
        for index, var in enumerate(var_list):
            if not self.is_binary_kernel(var):
                continue
            self.tables.binary_kernels.append(var)
            if resolved is not None:
                strength = resolved[index]
                unmatched = set()
            elif isinstance(self._m, float):
                strength = self._m
            else:
                path = variable_path(var)
                hits = [k for k in self._m if _name_matches(k, path)]
                unmatched.difference_update(hits)
                # The most specific key wins: an exact path before a layer name.
                hits.sort(key=lambda k: (k != path, -len(k)))
                strength = self._m[hits[0]] if hits else 0.0
            self.tables.build_strengths[index] = strength
            for key in variable_keys(var):
                self.tables.strength[key] = strength
        if unmatched:
            kernels = sorted(variable_path(v) for v in self.tables.binary_kernels)
            raise ValueError(
                f"MetaplasticAdam: the keys {sorted(unmatched)} of argument `m` name no "
                f"binary kernel of the variables being optimized. Binary kernels: "
                f"{kernels}. Use a layer name, a variable path, or a glob."
            )

    def update_step(self, gradient, variable):
        """Adam's step, attenuated where it would shrink a binary kernel's |W_h|."""
        strength = self.tables.strength.get(variable.ref(), 0.0)
        if strength == 0.0:  # static per variable: no extra ops for plain variables
            return super().update_step(gradient, variable)
        if isinstance(gradient, tf.IndexedSlices):
            gradient = tf.convert_to_tensor(gradient)
        m, v, v_hat = self.moments(variable)
        # The latent weights, also when Larq wraps them in a QuantizedVariable.
        w = getattr(variable, "latent_variable", variable)
        w_new, m_new, v_new, v_hat_new = _metaplastic_adam_update(
            tf.convert_to_tensor(w), tf.convert_to_tensor(m), tf.convert_to_tensor(v), gradient,
            tf.constant(strength, tf.float32), *adam_hyperparameters(self),
            v_hat=None if v_hat is None else tf.convert_to_tensor(v_hat))
        m.assign(m_new)
        v.assign(v_new)
        if v_hat is not None:
            v_hat.assign(v_hat_new)
        w.assign(w_new)

    def get_config(self):
        config = super().get_config()
        config["m"] = self.m
        if getattr(self, "_meta_built", False):
            config["resolved_strengths"] = list(self.tables.build_strengths)
        return config


def attenuate(hidden, m, strength):
    """The attenuated update direction:
    where(sign(W_h) * m > 0, (1 - tanh^2(strength |W_h|)) * m, m)."""
    shrinks = tf.sign(hidden) * m > 0
    f_meta = 1.0 - tf.square(tf.tanh(strength * tf.abs(hidden)))
    return tf.where(shrinks, f_meta * m, m)


# Fused by XLA into one pass over the kernel, on CPU as on GPU: unfused, the attenuation's
# five elementwise ops cost about 3x Adam's own update on a 2048 x 2048 kernel (2-core CPU).
_metaplastic_adam_update = tf.function(adam_update, jit_compile=True)


def _validate_strength(m):
    if isinstance(m, Mapping):
        if not m:
            raise ValueError("MetaplasticAdam: argument `m` is an empty mapping.")
        out = {}
        for key, value in m.items():
            if not isinstance(key, str):
                raise ValueError(
                    f"MetaplasticAdam: the keys of argument `m` must be layer or "
                    f"variable names (str), got {key!r}."
                )
            out[key] = _validate_strength(value)
        return out
    try:
        value = float(m)
    except (TypeError, ValueError):
        raise ValueError(
            f"MetaplasticAdam: argument `m` must be a float >= 0 or a mapping from "
            f"layer name to float, got {m!r}."
        ) from None
    if not value >= 0.0:  # also rejects NaN
        raise ValueError(f"MetaplasticAdam: argument `m` must be >= 0, got {m!r}.")
    return value


def parse_strength(text, separator=","):
    """`m` from its text form (command lines): '1.3' -> 1.3; 'hidden_0=1.3,hidden_1=1.5'
    -> {'hidden_0': 1.3, 'hidden_1': 1.5} (items joined by `separator`). Raises
    `ValueError` for anything `MetaplasticAdam` would not take."""
    text = text.strip()
    if "=" not in text:
        return _validate_strength(text)
    pairs = [item.split("=") for item in text.split(separator)]
    if any(len(pair) != 2 or not pair[0].strip() for pair in pairs):
        raise ValueError(f"MetaplasticAdam: `m` must read 'layer=value{separator}...', got {text!r}.")
    return _validate_strength({key.strip(): value for key, value in pairs})


def _check_positive_learning_rate(learning_rate):
    if isinstance(learning_rate, (int, float)) and not learning_rate > 0:
        raise ValueError(
            f"MetaplasticAdam: argument `learning_rate` must be > 0, got {learning_rate!r}."
        )
