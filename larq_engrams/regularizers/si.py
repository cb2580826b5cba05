"""Synaptic intelligence (Zenke, Poole & Ganguli 2017)."""
import tensorflow as tf

from larq_engrams.optimizers import Adam
from larq_engrams.regularizers.base import ConsolidationPenalty, latent

__all__ = ["SynapticIntelligence"]


class SynapticIntelligence(ConsolidationPenalty):
    r"""Synaptic intelligence: path-integral importance of every parameter.

    During task t, after every optimizer step with gradient g and update
    Delta = theta_after - theta_before:

    ```
    omega_i += -g_i * Delta_i                       # contribution to the loss decrease
    ```

    At the end of task t, with D_i = theta_i(end of t) - theta_i(start of t):

    ```
    Omega_i += omega_i / (D_i^2 + xi);   omega <- 0;   theta* <- theta
    L_SI = c * sum_i Omega_i (theta_i - theta*_i)^2
    ```

    The gradient of each step is recovered exactly from Adam's first moment,
    g_t = (m_t - beta_1 m_{t-1}) / (1 - beta_1), so SI needs no gradient hooks and works
    under `model.fit` as under `ContinualTrainer`; it therefore requires an Adam-family
    optimizer (Adam, `MetaplasticAdam`). As in the standard benchmark code, g is the
    gradient of the total loss.

    Args:
        model: the Keras model; the penalty is attached with `model.add_loss`.
        strength: c. Standard benchmark values (van de Ven et al.): split MNIST 10
            task-IL, 5e4 domain-IL, 5e3 class-IL; permuted MNIST 10.
        damping: xi (0.1 in Zenke et al. 2017 and the standard benchmark code).
        scenario: needed under plain `model.fit` (the trainer sets it).
    """

    def __init__(self, model, strength, damping=0.1, scenario=None):
        super().__init__(model, strength, scenario)
        self.damping = float(damping)
        self.omega, self.importance = self.state(), self.state()
        self.anchor = [tf.Variable(latent(p), trainable=False) for p in self.penalized_variables]
        self._before = self.state()
        self._momentum_before = self.state()
        self.optimizer = None

    def checkpoint_variables(self):
        # omega is zero at a task boundary, but saving it keeps a mid-task save exact.
        return {"omega": self.omega, "importance": self.importance, "anchor": self.anchor}

    def penalty(self):
        total = tf.add_n([
            tf.reduce_sum(w * tf.square(latent(p) - a))
            for p, w, a in zip(self.penalized_variables, self.importance, self.anchor)
        ])
        return self.strength * total

    def _momenta(self):
        optimizer = self.optimizer or getattr(self._attached_model, "optimizer", None)
        if not isinstance(optimizer, Adam):  # MetaplasticAdam included
            raise TypeError(
                f"SynapticIntelligence reads the step gradients from Adam's first moment; use "
                f"larq_engrams.optimizers.Adam or MetaplasticAdam, got {type(optimizer).__name__}."
            )
        return optimizer, [optimizer.moments(p)[0] if optimizer.has_moments(p) else None  # m_0 = 0
                           for p in self.penalized_variables]

    def on_train_batch_begin(self, batch, logs=None):
        _, momenta = self._momenta()
        for p, before, m, m_before in zip(self.penalized_variables, self._before, momenta, self._momentum_before):
            before.assign(latent(p))
            m_before.assign(tf.zeros_like(m_before) if m is None else m)

    def on_train_batch_end(self, batch, logs=None):
        optimizer, momenta = self._momenta()
        beta_1 = tf.cast(optimizer.beta_1, tf.float32)
        for p, before, m, m_before, omega in zip(self.penalized_variables, self._before, momenta,
                                                 self._momentum_before, self.omega):
            gradient = (m - beta_1 * m_before) / (1.0 - beta_1)
            omega.assign_add(-gradient * (latent(p) - before))

    def consolidate(self, task, dataset):
        for p, omega, importance, anchor in zip(self.penalized_variables, self.omega, self.importance, self.anchor):
            theta = latent(p)
            importance.assign_add(omega / (tf.square(theta - anchor) + self.damping))
            omega.assign(tf.zeros_like(omega))
            anchor.assign(theta)
