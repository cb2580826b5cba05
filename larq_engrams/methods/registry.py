"""Methods selectable by name: a model, an optimizer and the callbacks that make a
continual-learning method, built for a scenario.

```python
setup = methods.build("engram_bnn", scenario, hidden=(2048, 2048), learning_rate=0.005)
result = ContinualTrainer(setup.model, setup.optimizer, callbacks=setup.callbacks).fit(setup.scenario)
```
"""
import dataclasses

import tensorflow as tf

from larq_engrams.models import bnn, engram_bnn, mlp
from larq_engrams.optimizers import MetaplasticAdam

__all__ = ["MethodSetup", "HyperParameters", "build", "names", "register", "describe"]


@dataclasses.dataclass(frozen=True)
class HyperParameters:
    """Every method's settings in one place; each method reads the ones it uses.

    Defaults: METHOD.md section 1 (Adam lr 0.005, batch 100 is the scenario's),
    metaplasticity m = 1.3 (permuted MNIST, Laborieux et al. 2021), and this project's
    engram defaults (rho 0.25, q 0.9, beta 1.0).
    """

    hidden: tuple = (2048, 2048)
    learning_rate: float = 0.005
    m: object = 1.3
    engram_fraction: float = 0.25
    activation_probability: float = 0.9
    excitability: float = 1.0
    seed: int = 0

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass
class MethodSetup:
    """What the trainer (or `model.fit`) needs to run a method.

    Attributes:
        name: the method's registered name.
        model: the Keras model.
        optimizer: a zero-argument callable returning a fresh optimizer (re-created
            per task, as the reference does).
        callbacks: callbacks that implement the method (regularizers, ...).
        scenario: the scenario to train on (some methods transform it: `joint`).
        description: one line, for tables.
    """

    name: str
    model: tf.keras.Model
    optimizer: object
    callbacks: list
    scenario: object
    description: str


_REGISTRY = {}


def register(name, description):
    """Decorator registering `builder(scenario, hp) -> MethodSetup` under `name`."""

    def wrap(builder):
        _REGISTRY[name] = (builder, description)
        return builder

    return wrap


def names():
    return list(_REGISTRY)


def describe(name):
    return _REGISTRY[_check(name)][1]


def _check(name):
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(_REGISTRY)}.")
    return name


def build(name, scenario, hparams=None, **overrides):
    """Builds method `name` for `scenario` (hyperparameters from `hparams` and keyword
    overrides)."""
    builder, description = _REGISTRY[_check(name)]
    hp = (hparams or HyperParameters()).replace(**overrides)
    tf.keras.utils.set_random_seed(hp.seed)
    return builder(scenario, hp)


def _adam(hp):
    return lambda: tf.keras.optimizers.Adam(hp.learning_rate)


def _meta_adam(hp):
    return lambda: MetaplasticAdam(hp.learning_rate, m=hp.m)


def _engram_model(scenario, hp, **kwargs):
    args = dict(
        max_tasks=scenario.num_tasks,
        engram_fraction=hp.engram_fraction,
        activation_probability=hp.activation_probability,
        excitability=hp.excitability,
        seed=hp.seed,
    )
    args.update(kwargs)
    return engram_bnn(scenario.input_shape, scenario.num_classes, hidden=hp.hidden, **args)


def _setup(name, model, optimizer, scenario, callbacks=()):
    return MethodSetup(name, model, optimizer, list(callbacks), scenario, describe(name))


@register("finetune", "full-precision MLP (ReLU), Adam, no protection")
def _finetune(scenario, hp):
    return _setup("finetune", mlp(scenario.input_shape, scenario.num_classes, hp.hidden), _adam(hp), scenario)


@register("bnn", "plain Larq BNN, Adam, no protection")
def _bnn(scenario, hp):
    return _setup("bnn", bnn(scenario.input_shape, scenario.num_classes, hp.hidden), _adam(hp), scenario)


@register("mbnn", "Larq BNN, MetaplasticAdam (Laborieux et al. 2021)")
def _mbnn(scenario, hp):
    return _setup("mbnn", bnn(scenario.input_shape, scenario.num_classes, hp.hidden), _meta_adam(hp), scenario)


@register("engram", "engram BNN, plain Adam (engrams only)")
def _engram(scenario, hp):
    return _setup("engram", _engram_model(scenario, hp), _adam(hp), scenario)


@register("engram_bnn", "engram BNN, MetaplasticAdam (the method: engrams + metaplasticity)")
def _engram_bnn(scenario, hp):
    return _setup("engram_bnn", _engram_model(scenario, hp), _meta_adam(hp), scenario)
