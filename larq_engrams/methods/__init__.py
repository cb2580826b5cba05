"""Continual-learning methods selectable by name (see `registry`)."""
from larq_engrams.methods.registry import (
    REPLAY,
    HyperParameters,
    MethodSetup,
    build,
    describe,
    equal_bytes_buffer_size,
    hyperparameters_read,
    known,
    method_hyperparameters,
    names,
    register,
)

__all__ = ["HyperParameters", "MethodSetup", "REPLAY", "build", "describe", "equal_bytes_buffer_size",
           "hyperparameters_read", "known", "method_hyperparameters", "names", "register"]
