"""Continual-learning methods selectable by name (see `registry`)."""
from larq_engrams.methods.registry import (
    LONG_SEQUENCE,
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
    router_class_covariance,
    router_feature_count,
    router_shortlist,
)

__all__ = ["HyperParameters", "LONG_SEQUENCE", "MethodSetup", "REPLAY", "build", "describe", "equal_bytes_buffer_size",
           "hyperparameters_read", "known", "method_hyperparameters", "names", "register", "router_class_covariance",
           "router_feature_count", "router_shortlist"]
