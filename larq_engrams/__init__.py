"""larq-engrams: continual learning with binarized neural networks.

Two mechanisms against catastrophic forgetting on Larq BNNs:

- `larq_engrams.optimizers.MetaplasticAdam`: Adam that attenuates updates shrinking
  the hidden weights of binary kernels (Laborieux et al., 2021).
- `larq_engrams.layers.EngramDense`: a Larq `QuantDense` + BatchNorm + sign block whose
  units are gated by a per-task, stochastically reactivated engram (Aguilar et al., 2025).

Larq requires Keras 2 (`tf_keras`). Importing this package sets `TF_USE_LEGACY_KERAS=1`
before TensorFlow resolves `tf.keras`, so users never have to; if `tf.keras` was already
bound to Keras 3 in this process, the import fails with instructions.

Quiet start-up: by default TensorFlow is imported and its devices listed with the
process' stderr pointed at /dev/null, and TensorFlow's later C++ INFO lines are off
(`TF_CPP_MIN_LOG_LEVEL=1` unless set): its start-up lines (CUDA probing on machines
without a GPU, CPU-feature notes, absl's pre-initialization warning) are C++ logs that
no Python setting can filter. A failing import still raises its Python exception. To
see them, set `LARQ_ENGRAMS_QUIET_STARTUP=0` in the environment before the import
(or import TensorFlow yourself first).
"""
import contextlib
import os

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
    import sys

    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _use_legacy_keras():
    """Make `tf.keras` resolve to `tf_keras` and check that it did."""
    if os.environ.get("TF_USE_LEGACY_KERAS", "").strip().lower() not in ("1", "true"):
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
    quiet = os.environ.get("LARQ_ENGRAMS_QUIET_STARTUP", "1").strip() != "0"
    if quiet:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    with _stderr_to_devnull(quiet):
        import tensorflow as tf  # noqa: E402  (must follow the environment variable)

        if quiet:
            tf.config.list_physical_devices()  # the CUDA probe ("failed call to cuInit" without a GPU)

    # The module's own name changes once TensorFlow re-registers it as
    # "tensorflow.keras"; where its Model class comes from does not.
    module = getattr(getattr(tf.keras, "Model", None), "__module__", "") or ""
    if not module.startswith("tf_keras"):
        raise ImportError(_LEGACY_KERAS_HINT.format(module=module or repr(tf.keras)))


_use_legacy_keras()

from larq_engrams import layers, models, optimizers  # noqa: E402
from larq_engrams.layers import EngramDense  # noqa: E402
from larq_engrams.models import EngramModel, bnn, engram_bnn, mlp  # noqa: E402
from larq_engrams.optimizers import MetaplasticAdam  # noqa: E402

__all__ = [
    "EngramDense",
    "EngramModel",
    "MetaplasticAdam",
    "bnn",
    "engram_bnn",
    "layers",
    "mlp",
    "models",
    "optimizers",
]
