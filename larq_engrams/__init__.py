"""larq-engrams: continual learning with binarized neural networks.

Two mechanisms against catastrophic forgetting on Larq BNNs:

- `larq_engrams.optimizers.MetaplasticAdam`: Adam that attenuates updates shrinking
  the hidden weights of binary kernels (Laborieux et al., 2021).
- `larq_engrams.layers.EngramDense`: a Larq `QuantDense` + BatchNorm + sign block whose
  units are gated by a per-task, stochastically reactivated engram (Aguilar et al., 2025).

The maths: docs/method.md.

Larq requires Keras 2 (`tf_keras`). Importing this package sets `TF_USE_LEGACY_KERAS=1`
before TensorFlow resolves `tf.keras`, so users never have to; if `tf.keras` was already
bound to Keras 3 in this process, the import fails with instructions.

TensorFlow itself is imported when first needed (a name below such as `EngramModel`, a
submodule that uses it, or your own `import tensorflow`), not by `import larq_engrams`:
`larq_engrams.runtime` runs exported networks with NumPy alone. That first import is
quiet: TensorFlow's C++ start-up lines (CUDA probing on machines without a GPU,
CPU-feature notes, absl's pre-initialization warning), which no Python setting can
filter, go to /dev/null, and its later C++ INFO and WARNING lines are off
(`TF_CPP_MIN_LOG_LEVEL=2` unless set; errors still print). A failing import still raises its Python exception. To see them, set
`LARQ_ENGRAMS_QUIET_STARTUP=0` in the environment before the import, or import
TensorFlow before this package.
"""
import contextlib
import importlib
import importlib.abc
import importlib.util
import os
import sys

__version__ = "0.1.0"

_LEGACY_KERAS_HINT = (
    "larq-engrams needs Keras 2 (the `tf-keras` package) because Larq does not support "
    "Keras 3, but `tf.keras` in this process is already bound to Keras 3 ({module}). "
    "Import larq_engrams before anything touches `tf.keras`, or set "
    "TF_USE_LEGACY_KERAS=1 in the environment before starting Python (in a notebook: "
    "restart the kernel, then run `import larq_engrams` first). Also check that "
    "`tf-keras` is installed with the same minor version as `tensorflow`."
)


@contextlib.contextmanager
def _stderr_to_devnull(active):
    """File descriptor 2 (where C++ logs go) pointed at /dev/null while active."""
    if not active:
        yield
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _check_keras_2(tf):
    # The module's own name changes once TensorFlow re-registers it as
    # "tensorflow.keras"; where its Model class comes from does not.
    module = getattr(getattr(tf.keras, "Model", None), "__module__", "") or ""
    if not module.startswith("tf_keras"):
        raise ImportError(_LEGACY_KERAS_HINT.format(module=module or repr(tf.keras)))


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports TensorFlow, the first time anything asks for it, with the start-up lines
    off (see the module docstring), then checks that `tf.keras` is Keras 2. It removes
    itself first: every later import is Python's own."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "tensorflow":
            return None
        sys.meta_path.remove(self)
        quiet = os.environ.get("LARQ_ENGRAMS_QUIET_STARTUP", "1").strip() != "0"
        if quiet:
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        with _stderr_to_devnull(quiet):
            tf = importlib.import_module("tensorflow")
            if quiet:
                tf.config.list_physical_devices()  # the CUDA probe ("failed call to cuInit" without a GPU)
        _check_keras_2(tf)
        # Keras finds this package's layers, models and optimizers by their registered
        # names when it loads a saved model: register them now, unless Larq or one of
        # this package's modules is what imports TensorFlow (it is being imported, and
        # registers them itself).
        if not any(name == "larq" or name.startswith("larq_engrams.") for name in sys.modules):
            importlib.import_module("larq_engrams.models")
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        return sys.modules[spec.name]  # imported above

    def exec_module(self, module):
        pass


def _use_legacy_keras():
    """Make `tf.keras` resolve to `tf_keras`, now if TensorFlow is loaded, else when it is."""
    if os.environ.get("TF_USE_LEGACY_KERAS", "").strip().lower() not in ("1", "true"):
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
    if "tensorflow" in sys.modules:
        _check_keras_2(sys.modules["tensorflow"])
    elif not any(isinstance(finder, _QuietTensorFlowImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowImport())


_use_legacy_keras()

# The public names, imported (with TensorFlow) when first used.
_PUBLIC = {
    "EngramDense": ("larq_engrams.layers", "EngramDense"),
    "EngramModel": ("larq_engrams.models", "EngramModel"),
    "MetaplasticAdam": ("larq_engrams.optimizers", "MetaplasticAdam"),
    "bnn": ("larq_engrams.models", "bnn"),
    "engram_bnn": ("larq_engrams.models", "engram_bnn"),
    "mlp": ("larq_engrams.models", "mlp"),
    "layers": ("larq_engrams.layers", None),
    "models": ("larq_engrams.models", None),
    "optimizers": ("larq_engrams.optimizers", None),
}

__all__ = sorted(_PUBLIC)


def __getattr__(name):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'larq_engrams' has no attribute {name!r}")
    module, attribute = _PUBLIC[name]
    module = importlib.import_module(module)
    return module if attribute is None else getattr(module, attribute)


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))
