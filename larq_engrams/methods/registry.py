"""Methods selectable by name: a model, an optimizer and the callbacks that make a
continual-learning method, built for a scenario.

```python
setup = methods.build("engram_bnn", scenario, hidden=(2048, 2048), learning_rate=0.005)
result = ContinualTrainer(setup.model, setup.optimizer, callbacks=setup.callbacks).fit(setup.scenario)
```
"""
import dataclasses

import numpy as np
import tensorflow as tf

from larq_engrams.benchmarks.joint import joint
from larq_engrams.class_statistics import ClassStatisticsClassifier
from larq_engrams.distillation import LearningWithoutForgetting, LwFUpdate
from larq_engrams.models import bnn, engram_bnn, mlp
from larq_engrams.optimizers import Adam, MetaplasticAdam
from larq_engrams.regularizers import EWC, OnlineEWC, SynapticIntelligence
from larq_engrams.replay import ReplayModel, ReplayUpdate
from larq_engrams.task_inference import (CLASS_COVARIANCES, DEFAULT_CONV, DEFAULT_FEATURES, DEFAULT_PATCH_FLOOR,
                                         DEFAULT_SHORTLIST, DEFAULT_SHRINKAGE, InputDiscriminant,
                                         features_within_budget, resolve_feature_map)

__all__ = [
    "MethodSetup", "HyperParameters", "REPLAY", "build", "known", "names", "register", "describe", "default_strengths",
    "equal_bytes_buffer_size", "engram_capacity", "hyperparameters_read", "method_hyperparameters", "LONG_SEQUENCE",
    "router_class_covariance", "router_feature_count", "router_shortlist",
]

# Regularization strengths of the standard benchmark code (van de Ven, Tuytelaars &
# Tolias 2022, github.com/GMvandeVen/continual-learning, param_values.py), per benchmark
# and setting: (EWC lambda, SI c). Other benchmarks use their "other experiments" values.
_STANDARD_STRENGTHS = {
    ("split_mnist", "task"): (1e5, 10.0),
    ("split_mnist", "domain"): (1e10, 5e4),
    ("split_mnist", "class"): (1e9, 5e3),
    ("permuted_mnist", "domain"): (100.0, 10.0),
}
_OTHER_STRENGTHS = {"task": (100.0, 10.0), "domain": (100.0, 10.0), "class": (100.0, 5.0)}


def default_strengths(scenario):
    """(EWC lambda, SI c) for a scenario, from the standard benchmark code."""
    return _STANDARD_STRENGTHS.get((scenario.name, scenario.setting), _OTHER_STRENGTHS[scenario.setting])


@dataclasses.dataclass(frozen=True)
class HyperParameters:
    """Every method's settings in one place; each method reads the ones it uses.

    Defaults: docs/method.md, section 1 (Adam lr 0.005, batch 100 is the scenario's),
    metaplasticity m = 1.3 (permuted MNIST, Laborieux et al. 2021), and this project's
    engram defaults (rho min(0.2, 1 / T) for T engrams, q 0.9, beta 6.0: nearly disjoint
    engrams, protected).
    """

    hidden: tuple = (2048, 2048)
    learning_rate: float = 0.005
    m: object = 1.3
    engram_fraction: float = None  # rho; None: by the engrams held, min(0.2, 1 / T) (`engram_fraction_for`)
    activation_probability: float = 0.9
    excitability: float = 6.0
    protect_engrams: bool = True  # freeze what earlier engrams use (`EngramModel`)
    router_features: str = "auto"  # the router's feature map: "dense", "conv", or "auto" (conv where images)
    router_class_covariance: str = "auto"  # the router's class evidence: "shared", "task", or "auto" (router_class_covariance)
    router_shortlist: int = None  # the router's shortlist k (`InputDiscriminant`); None: by the sequence (router_shortlist)
    router_conv: tuple = DEFAULT_CONV  # the convolutional map's filter size k and pooling p (so far the routers alone read it)
    router_patch_floor: float = DEFAULT_PATCH_FLOOR  # the convolutional map's contrast floor eps; None: no normalization
    max_engrams: int = None  # engram methods: engrams the model can hold; None: the scenario's tasks
    task_free: dict = None  # engram methods in a stream: `TaskFreeEngrams` settings; None: its defaults
    lda_features: int = None  # the router's random features; None: by the sequence's length (router_feature_count)
    seed: int = 0
    backbone: str = "mlp"  # ewc, online_ewc, si, lwf, joint: "mlp" or "bnn"
    ewc_lambda: float = None  # None: the standard value for the scenario (below)
    online_ewc_gamma: float = 1.0
    fisher_samples: int = 200
    si_c: float = None  # None: the standard value for the scenario (below)
    si_damping: float = 0.1
    lwf_temperature: float = 2.0
    lwf_strength: float = 1.0
    xdg_gated_fraction: float = None  # None: 0.9 (split MNIST task-IL), else 0.6
    slda_shrinkage: float = 0.1
    statistics_features: int = None  # ncm, slda: None for the inputs, else M random ReLU features
    buffer_size: int = 200  # er, derpp, er_bnn: examples in the replay buffer
    derpp_alpha: float = 0.5  # DER++: weight of the logit-matching term
    derpp_beta: float = 0.5  # DER++: weight of the replayed labels' cross-entropy

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


def register(name, description, reads):
    """Decorator registering `builder(scenario, hp) -> MethodSetup` under `name`; `reads`
    names the fields of `HyperParameters` the builder uses (what a run records and what
    makes two runs of the method the same run)."""
    unknown = set(reads) - {f.name for f in dataclasses.fields(HyperParameters)}
    if unknown:
        raise ValueError(f"method {name!r} reads unknown hyperparameters {sorted(unknown)}.")

    def wrap(builder):
        _REGISTRY[name] = (builder, description, tuple(reads))
        return builder

    return wrap


def hyperparameters_read(name):
    """The `HyperParameters` fields method `name` uses. A replay budget in the name
    replaces `buffer_size` ("er@1000"); "er@equal" derives it from `lda_features` and
    `max_engrams` (the router engram_bnn would keep)."""
    reads = _REGISTRY[_check(name)][2]
    budget = name.partition("@")[2]
    if budget:
        equal = ("lda_features", "max_engrams") if budget == "equal" else ()
        reads = tuple(f for f in reads if f != "buffer_size") + equal
    return reads


def method_hyperparameters(name, hp):
    """`{field: value}` of the fields of `hp` that method `name` uses."""
    return {field: getattr(hp, field) for field in hyperparameters_read(name)}


def names():
    return list(_REGISTRY)


def describe(name):
    budget = name.partition("@")[2]
    description = _REGISTRY[_check(name)][1]
    return description + (f"; buffer {budget}" if budget else "")


REPLAY = ("er", "derpp", "er_bnn")


def _check(name):
    base, _, budget = name.partition("@")
    if base not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(_REGISTRY)}.")
    if budget and not (base in REPLAY and (budget == "equal" or budget.isdigit() and int(budget) > 0)):
        raise ValueError(f"method {name!r}: only replay methods ({', '.join(REPLAY)}) take a buffer size, "
                         "as 'er@1000' (examples) or 'er@equal' (the bytes of engram_bnn's learning state).")
    return base


def build(name, scenario, hparams=None, **overrides):
    """Builds method `name` for `scenario` (hyperparameters from `hparams` and keyword
    overrides). Replay methods take their buffer size in the name too: "er@1000" keeps
    1,000 examples, "er@equal" as many as fit in the bytes that engram_bnn keeps to learn
    (its router's statistics, `InputDiscriminant.memory_bits`) for this scenario."""
    base = _check(name)
    builder = _REGISTRY[base][0]
    hp = (hparams or HyperParameters()).replace(**overrides)
    budget = name.partition("@")[2]
    if budget:
        hp = hp.replace(buffer_size=equal_bytes_buffer_size(scenario, hp, base == "derpp")
                        if budget == "equal" else int(budget))
    tf.keras.utils.set_random_seed(hp.seed)
    setup = builder(scenario, hp)
    setup.name, setup.description = name, describe(name)
    return setup


def known(name):
    """Whether `name` is a registered method, or a replay method with a buffer size."""
    try:
        _check(name)
    except ValueError:
        return False
    return True


def equal_bytes_buffer_size(scenario, hp, logits=False):
    """The replay buffer (uint8 inputs, int32 labels, float32 logits for DER++) that holds
    the bytes engram_bnn keeps only to learn further tasks in `scenario`."""
    features = _router_feature_map(scenario, hp)  # the same router engram_bnn builds
    router = InputDiscriminant(engram_capacity(scenario, hp), scenario.num_classes, router_feature_count(scenario, hp),
                               feature_map=features["router_features"], image_shape=features["image_shape"],
                               class_covariance=router_class_covariance(scenario, hp))
    router.build((None, int(np.prod(scenario.input_shape))))
    per_example = int(np.prod(scenario.input_shape)) + 4 + (4 * scenario.num_classes if logits else 0)
    return router.memory_bits()[1] // 8 // per_example


# What each family of methods reads (see `register`).
_NETWORK = ("hidden", "learning_rate", "seed")
_METAPLASTIC = ("m",)
_ENGRAM = (*_NETWORK, "engram_fraction", "activation_probability", "excitability", "lda_features",
           "protect_engrams", "router_features", "router_patch_floor", "router_class_covariance", "router_shortlist",
           "max_engrams", "task_free")
_BACKBONE = (*_NETWORK, "backbone")
_REPLAY = (*_NETWORK, "buffer_size")


def _adam(hp):
    return lambda: Adam(hp.learning_rate)


def _meta_adam(hp):
    return lambda: MetaplasticAdam(hp.learning_rate, m=hp.m)


def engram_capacity(scenario, hp):
    """The engrams an engram method's model holds: `max_engrams`, or one per task."""
    return scenario.num_tasks if hp.max_engrams is None else int(hp.max_engrams)


LONG_SEQUENCE = 50  # tasks beyond which a sequence is long: a sampled R, a router within ROUTER_BUDGET


def router_feature_count(scenario, hp):
    """M, the router's random features: `lda_features`, or by default DEFAULT_FEATURES up
    to LONG_SEQUENCE tasks and beyond, the most that keep the router within
    ROUTER_BUDGET with room for every engram (`features_within_budget`)."""
    if hp.lda_features is not None:
        return int(hp.lda_features)
    if scenario.num_tasks <= LONG_SEQUENCE:
        return DEFAULT_FEATURES
    features = _router_feature_map(scenario, hp)
    return features_within_budget(engram_capacity(scenario, hp), scenario.num_classes,
                                  int(np.prod(scenario.input_shape)), feature_map=features["router_features"],
                                  image_shape=features["image_shape"],
                                  class_covariance=router_class_covariance(scenario, hp))


def router_shortlist(scenario, hp):
    """k, the engrams whose groups the router scores for an input (`InputDiscriminant`,
    shortlist): `router_shortlist`, or by default, where tasks share their labels
    (domain-IL) and the sequence is longer than LONG_SEQUENCE tasks, the DEFAULT_SHORTLIST
    engrams with the best mean group, so that routing's cost grows by M, not C M, per
    task; every group otherwise (a k >= the tasks scores every group). In class-IL an
    engram has data for a few classes only, so a shortlist saves little there, and on
    validation its mean group found the task less often (results/issue44/validation/shortlist)."""
    if hp.router_shortlist is not None:
        return int(hp.router_shortlist)
    return DEFAULT_SHORTLIST if scenario.setting == "domain" and scenario.num_tasks > LONG_SEQUENCE else None


def router_class_covariance(scenario, hp):
    """The router's class evidence inside a task (`InputDiscriminant`, class_covariance):
    `router_class_covariance`, where "auto" is "task" where the tasks share their labels
    (domain-IL: one class looks different in each task, and one covariance pools them)
    and "shared" elsewhere. Chosen on validation (results/issue44/README.md): Permuted
    MNIST gains, the Split benchmarks neither gain nor lose."""
    choice = hp.router_class_covariance
    if choice not in ("auto", *CLASS_COVARIANCES):
        raise ValueError(f"router_class_covariance must be 'auto', 'shared' or 'task', got {choice!r}.")
    if choice == "auto":
        return "task" if scenario.setting == "domain" else "shared"
    return choice


def _router_feature_map(scenario, hp):
    """`router_features`, `image_shape` and `router_patch_floor` for the scenario: "auto"
    is "conv" where the inputs are images with their pixels in place
    (`Scenario.image_shape`), else "dense"."""
    choice, image_shape = resolve_feature_map(hp.router_features, scenario.image_shape)
    return {"router_features": choice, "image_shape": image_shape, "router_patch_floor": hp.router_patch_floor}


def _engram_model(scenario, hp, **kwargs):
    args = dict(
        max_tasks=engram_capacity(scenario, hp),
        engram_fraction=hp.engram_fraction,
        activation_probability=hp.activation_probability,
        excitability=hp.excitability,
        protect_engrams=hp.protect_engrams,
        **_router_feature_map(scenario, hp),
        seed=hp.seed,
        router=not scenario.provides_task_id,  # task-IL gives the task id: nothing to route
        task_free=hp.task_free,
        lda_features=router_feature_count(scenario, hp),
        lda_class_covariance=router_class_covariance(scenario, hp),
        router_shortlist=router_shortlist(scenario, hp),
    )
    args.update(kwargs)
    return engram_bnn(scenario.input_shape, scenario.num_classes, hidden=hp.hidden, **args)


def _setup(name, model, optimizer, scenario, callbacks=()):
    return MethodSetup(name, model, optimizer, list(callbacks), scenario, describe(name))


@register("finetune", "full-precision MLP (ReLU), Adam, no protection", reads=_NETWORK)
def _finetune(scenario, hp):
    return _setup("finetune", mlp(scenario.input_shape, scenario.num_classes, hp.hidden), _adam(hp), scenario)


@register("bnn", "plain Larq BNN, Adam, no protection", reads=_NETWORK)
def _bnn(scenario, hp):
    return _setup("bnn", bnn(scenario.input_shape, scenario.num_classes, hp.hidden), _adam(hp), scenario)


@register("mbnn", "Larq BNN, MetaplasticAdam (Laborieux et al. 2021)", reads=(*_NETWORK, *_METAPLASTIC))
def _mbnn(scenario, hp):
    return _setup("mbnn", bnn(scenario.input_shape, scenario.num_classes, hp.hidden), _meta_adam(hp), scenario)


@register("engram", "engram BNN, plain Adam (engrams only)", reads=_ENGRAM)
def _engram(scenario, hp):
    return _setup("engram", _engram_model(scenario, hp), _adam(hp), scenario)


@register("engram_bnn", "engram BNN, MetaplasticAdam (the method: engrams + metaplasticity)",
          reads=(*_ENGRAM, *_METAPLASTIC))
def _engram_bnn(scenario, hp):
    return _setup("engram_bnn", _engram_model(scenario, hp), _meta_adam(hp), scenario)


def _backbone(scenario, hp):
    if hp.backbone == "mlp":
        return mlp(scenario.input_shape, scenario.num_classes, hp.hidden)
    if hp.backbone == "bnn":
        return bnn(scenario.input_shape, scenario.num_classes, hp.hidden)
    raise ValueError(f"`backbone` must be 'mlp' or 'bnn', got {hp.backbone!r}.")


def _ewc_strength(scenario, hp):
    return hp.ewc_lambda if hp.ewc_lambda is not None else default_strengths(scenario)[0]


@register("joint", "trains on the union of all tasks so far (upper bound)", reads=_BACKBONE)
def _joint(scenario, hp):
    return _setup("joint", _backbone(scenario, hp), _adam(hp), joint(scenario, hp.seed))


@register("ewc", "EWC (Kirkpatrick et al. 2017), empirical Fisher, one penalty per task",
          reads=(*_BACKBONE, "ewc_lambda", "fisher_samples"))
def _ewc(scenario, hp):
    model = _backbone(scenario, hp)
    penalty = EWC(model, _ewc_strength(scenario, hp), num_samples=hp.fisher_samples, scenario=scenario)
    return _setup("ewc", model, _adam(hp), scenario, [penalty])


@register("online_ewc", "online EWC (Schwarz et al. 2018), decayed running Fisher",
          reads=(*_BACKBONE, "ewc_lambda", "online_ewc_gamma", "fisher_samples"))
def _online_ewc(scenario, hp):
    model = _backbone(scenario, hp)
    penalty = OnlineEWC(model, _ewc_strength(scenario, hp), gamma=hp.online_ewc_gamma,
                        num_samples=hp.fisher_samples, scenario=scenario)
    return _setup("online_ewc", model, _adam(hp), scenario, [penalty])


@register("si", "synaptic intelligence (Zenke et al. 2017), path-integral importance",
          reads=(*_BACKBONE, "si_c", "si_damping"))
def _si(scenario, hp):
    model = _backbone(scenario, hp)
    strength = hp.si_c if hp.si_c is not None else default_strengths(scenario)[1]
    penalty = SynapticIntelligence(model, strength, damping=hp.si_damping, scenario=scenario)
    return _setup("si", model, _adam(hp), scenario, [penalty])


@register("lwf", "learning without forgetting (Li & Hoiem 2017), distillation on old classes, T = 2",
          reads=(*_BACKBONE, "lwf_temperature", "lwf_strength"))
def _lwf(scenario, hp):
    model = LearningWithoutForgetting(_backbone(scenario, hp), hp.lwf_temperature, hp.lwf_strength)
    return _setup("lwf", model, _adam(hp), scenario, [LwFUpdate(model, scenario)])


@register("ncm", "nearest class mean on the inputs (class statistics only: cannot forget)",
          reads=("statistics_features", "seed"))
def _ncm(scenario, hp):
    model = ClassStatisticsClassifier(scenario.input_shape, scenario.num_classes, rule="ncm",
                                      features=hp.statistics_features, seed=hp.seed)
    return _setup("ncm", model, _adam(hp), scenario)  # the optimizer is never used


@register("slda", "streaming LDA (Hayes & Kanan 2020), shared covariance shrunk by 0.1, on the inputs",
          reads=("slda_shrinkage", "statistics_features", "seed"))
def _slda(scenario, hp):
    model = ClassStatisticsClassifier(scenario.input_shape, scenario.num_classes, rule="slda",
                                      shrinkage=hp.slda_shrinkage, features=hp.statistics_features, seed=hp.seed)
    return _setup("slda", model, _adam(hp), scenario)


def _router_alone(name, rule, scenario, hp):
    """The engram model's task router used directly as a classifier: the same random
    features (seed and count, `lda_features`), shrinkage, groups and one pass. Where
    tasks share labels (domain-IL) the router keeps a group per (task, class), and so
    does this; in class-IL those are the classes."""
    model = ClassStatisticsClassifier(scenario.input_shape, scenario.num_classes, rule=rule,
                                      shrinkage=DEFAULT_SHRINKAGE, features=router_feature_count(scenario, hp),
                                      seed=hp.seed,
                                      task_groups=scenario.num_tasks if scenario.setting == "domain" else 1,
                                      conv_kernel_size=hp.router_conv[0], conv_pool=hp.router_conv[1],
                                      class_covariance=router_class_covariance(scenario, hp) if rule == "slda" else "shared",
                                      shortlist=router_shortlist(scenario, hp),
                                      **{{"router_features": "feature_map", "router_patch_floor": "conv_patch_floor"}
                                         .get(k, k): v for k, v in _router_feature_map(scenario, hp).items()})
    return _setup(name, model, _adam(hp), scenario)


@register("ncm_rf", "nearest class mean on the engram router's random features (the router alone, no network)",
          reads=("lda_features", "router_features", "router_conv", "router_patch_floor", "router_shortlist", "seed"))
def _ncm_rf(scenario, hp):
    return _router_alone("ncm_rf", "ncm", scenario, hp)


@register("slda_rf", "streaming LDA on the engram router's random features and shrinkage (the router alone)",
          reads=("lda_features", "router_features", "router_conv", "router_patch_floor", "router_class_covariance",
                 "router_shortlist", "seed"))
def _slda_rf(scenario, hp):
    return _router_alone("slda_rf", "slda", scenario, hp)


def _replay(name, method, network, scenario, hp):
    model = ReplayModel(network, hp.buffer_size, method, hp.derpp_alpha, hp.derpp_beta, seed=hp.seed)
    return _setup(name, model, _adam(hp), scenario, [ReplayUpdate(model, scenario)])


@register("er", "experience replay (Chaudhry et al. 2019), class-balanced reservoir, full-precision MLP",
          reads=_REPLAY)
def _er(scenario, hp):
    return _replay("er", "er", mlp(scenario.input_shape, scenario.num_classes, hp.hidden), scenario, hp)


@register("derpp", "DER++ (Buzzega et al. 2020): replayed labels and logits, full-precision MLP",
          reads=(*_REPLAY, "derpp_alpha", "derpp_beta"))
def _derpp(scenario, hp):
    return _replay("derpp", "derpp", mlp(scenario.input_shape, scenario.num_classes, hp.hidden), scenario, hp)


@register("er_bnn", "experience replay on the plain Larq BNN, Adam", reads=_REPLAY)
def _er_bnn(scenario, hp):
    return _replay("er_bnn", "er", bnn(scenario.input_shape, scenario.num_classes, hp.hidden), scenario, hp)


@register("xdg", "context-dependent gating (Masse et al. 2018): fixed random gates, needs the task id",
          reads=("hidden", "learning_rate", "seed", "lda_features", "xdg_gated_fraction"))
def _xdg(scenario, hp):
    if scenario.setting != "task":
        raise ValueError(
            f"xdg gates units by the task id, which the {scenario.setting}-incremental setting does "
            f"not give at test time; use setting='task'."
        )
    gated = hp.xdg_gated_fraction
    if gated is None:
        gated = 0.9 if scenario.name == "split_mnist" else 0.6  # standard benchmark code
    # The engram machinery with its stochastic and excitability parts switched off:
    # uniform random, fixed, deterministic gates keeping 1 - gated of the units.
    model = _engram_model(scenario, hp, engram_fraction=1.0 - gated, activation_probability=1.0,
                          excitability=0.0, protect_engrams=False)
    return _setup("xdg", model, _adam(hp), scenario)
