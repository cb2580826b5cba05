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
    "MetaplasticAdam", "adam_hyperparameters", "adam_moments", "adam_update", "attenuate", "has_adam_moments",
    "begin_step", "is_binary_kernel", "is_built", "variable_path",
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


def adam_moments(optimizer, variable):
    """Adam's (m, v, v_hat) slot variables of `variable` (v_hat: None without AMSGrad).

    tf_keras has no public accessor for an optimizer's slots; this is the one place in
    the package that reads Adam's own bookkeeping (the fields its subclasses use:
    `_var_key`, `_index_dict`, `_momentums`, `_velocities`, `_velocity_hats`). Sparse execution,
    `SynapticIntelligence` and `MetaplasticAdam` go through it, and their tests
    (`tests/test_sparse_execution.py`, `test_regularizers.py`, `test_optimizers.py`)
    fail if a tf_keras release changes it.
    """
    index = optimizer._index_dict[optimizer._var_key(variable)]
    v_hat = optimizer._velocity_hats[index] if getattr(optimizer, "amsgrad", False) else None
    return optimizer._momentums[index], optimizer._velocities[index], v_hat


def has_adam_moments(optimizer, variable):
    """Whether the (built) Adam optimizer holds moments for `variable` (see `adam_moments`)."""
    return optimizer._var_key(variable) in getattr(optimizer, "_index_dict", {})


def is_built(optimizer):
    """Whether the optimizer has made its slots (see `adam_moments`)."""
    return bool(getattr(optimizer, "_built", False))


def begin_step(optimizer):
    """What `apply_gradients` does before its updates, for steps that update variables
    without it (sparse execution): a learning-rate schedule evaluated at this step
    (see `adam_moments` on why this reaches into the optimizer)."""
    optimizer._compute_current_learning_rate()


def adam_hyperparameters(optimizer):
    """`(alpha_t, epsilon, beta_1, beta_2)` of the coming step, float32, with Adam's
    bias-corrected step size alpha_t = lr sqrt(1 - beta_2^t) / (1 - beta_1^t)."""
    local_step = tf.cast(optimizer.iterations + 1, tf.float32)
    beta_2_power = tf.pow(tf.cast(optimizer.beta_2, tf.float32), local_step)
    beta_1_power = tf.pow(tf.cast(optimizer.beta_1, tf.float32), local_step)
    alpha = tf.cast(optimizer.learning_rate, tf.float32) * tf.sqrt(1 - beta_2_power) / (1 - beta_1_power)
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
class MetaplasticAdam(tf.keras.optimizers.Adam):
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
        # var key -> strength, filled in `build`.
        self._meta_strength = {}

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
        return self._meta_strength.get(self._var_key(variable), 0.0)

    def metaplastic_strengths(self) -> dict:
        """`{variable path: m}` for every variable the attenuation acts on (m > 0)."""
        return {
            variable_path(var): self._meta_strength[self._var_key(var)]
            for var in self._variables_by_key.values()
            if self._meta_strength.get(self._var_key(var), 0.0) > 0.0
        }

    def attenuated_fractions(self) -> dict:
        """`{variable path: fraction}`: per attenuated kernel, the fraction of entries whose
        current first moment points toward zero (sign(W_h) * m_t > 0), i.e. whose Adam
        step is being attenuated. Cheap: one elementwise pass; for logging."""
        out = {}
        for key, var in getattr(self, "_variables_by_key", {}).items():
            if not has_adam_moments(self, var):
                continue  # task-scoped moments: `BlockSlotCache.attenuated_fractions` has them
            if self._meta_strength.get(key, 0.0) > 0.0:
                hidden = tf.convert_to_tensor(getattr(var, "latent_variable", var))
                m = adam_moments(self, var)[0]
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
        self._variables_by_key = {}
        self._build_keys = [self._var_key(var) for var in var_list]
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
            key = self._var_key(var)
            self._variables_by_key[key] = var
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
            self._meta_strength[key] = strength
        if unmatched:
            kernels = sorted(variable_path(v) for v in self._variables_by_key.values())
            raise ValueError(
                f"MetaplasticAdam: the keys {sorted(unmatched)} of argument `m` name no "
                f"binary kernel of the variables being optimized. Binary kernels: "
                f"{kernels}. Use a layer name, a variable path, or a glob."
            )

    def update_step(self, gradient, variable):
        """Adam's step, attenuated where it would shrink a binary kernel's |W_h|."""
        strength = self._meta_strength.get(self._var_key(variable), 0.0)
        if strength == 0.0:  # static per variable: no extra ops for plain variables
            return super().update_step(gradient, variable)
        if isinstance(gradient, tf.IndexedSlices):
            gradient = tf.convert_to_tensor(gradient)
        m, v, v_hat = adam_moments(self, variable)
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
            config["resolved_strengths"] = [
                self._meta_strength.get(key, 0.0) for key in self._build_keys
            ]
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


def _check_positive_learning_rate(learning_rate):
    if isinstance(learning_rate, (int, float)) and not learning_rate > 0:
        raise ValueError(
            f"MetaplasticAdam: argument `learning_rate` must be > 0, got {learning_rate!r}."
        )
