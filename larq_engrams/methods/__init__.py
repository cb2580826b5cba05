"""Continual-learning methods selectable by name (see `registry`)."""
from larq_engrams.methods.registry import HyperParameters, MethodSetup, build, describe, names, register

__all__ = ["HyperParameters", "MethodSetup", "build", "describe", "names", "register"]
