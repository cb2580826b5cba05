"""Moved: learning without forgetting is a model wrapper (distillation needs each batch's
inputs, which a weight penalty does not see), so it lives in `larq_engrams.distillation`.
This module keeps the old imports working."""
from larq_engrams.distillation import LearningWithoutForgetting, LwFUpdate, distillation_loss  # noqa: F401

__all__ = ["LearningWithoutForgetting", "LwFUpdate", "distillation_loss"]
