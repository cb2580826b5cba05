"""Consolidation penalties that a Keras user attaches to a model: EWC, online EWC and
synaptic intelligence. Learning without forgetting is a model wrapper (distillation
needs each batch's inputs): `larq_engrams.distillation`."""
from larq_engrams.regularizers.base import ConsolidationPenalty, latent
from larq_engrams.regularizers.ewc import EWC, OnlineEWC, empirical_fisher
from larq_engrams.regularizers.si import SynapticIntelligence

__all__ = [
    "ConsolidationPenalty", "EWC", "OnlineEWC", "SynapticIntelligence", "empirical_fisher", "latent",
]
