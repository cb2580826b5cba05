"""Continual training: `ContinualTrainer` and its `ContinualResult` (`larq_engrams.results`)."""
from larq_engrams.results import ContinualResult, environment, write_atomically
from larq_engrams.training.step import train_step
from larq_engrams.training.checkpoints import CheckpointError
from larq_engrams.training.trainer import ContinualTrainer
from larq_engrams.training.stream import StreamTrainer

__all__ = ["CheckpointError", "ContinualResult", "ContinualTrainer", "StreamTrainer", "environment", "train_step", "write_atomically"]
