"""Continual training: `ContinualTrainer` and its `ContinualResult`."""
from larq_engrams.training.result import ContinualResult, environment, write_atomically
from larq_engrams.training.step import train_step
from larq_engrams.training.trainer import CheckpointError, ContinualTrainer

__all__ = ["CheckpointError", "ContinualResult", "ContinualTrainer", "environment", "train_step", "write_atomically"]
