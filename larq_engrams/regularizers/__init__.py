"""Consolidation penalties and distillation that a Keras user attaches to a model:
EWC, online EWC, synaptic intelligence; and learning without forgetting, a model
wrapper whose home is `larq_engrams.distillation` (exported here as well)."""
from larq_engrams.distillation import LearningWithoutForgetting, LwFUpdate, distillation_loss
from larq_engrams.regularizers.base import ConsolidationPenalty, latent
from larq_engrams.regularizers.ewc import EWC, OnlineEWC, empirical_fisher
from larq_engrams.regularizers.si import SynapticIntelligence

__all__ = [
    "ConsolidationPenalty", "EWC", "LearningWithoutForgetting", "LwFUpdate", "OnlineEWC",
    "SynapticIntelligence", "distillation_loss", "empirical_fisher", "latent",
]
