"""Callbacks for continual runs: task hooks, peak memory, TensorBoard, and the accuracy
matrix under plain `model.fit`."""
from larq_engrams.callbacks.accuracy import AccuracyMatrixCallback
from larq_engrams.callbacks.base import ContinualCallback, TaskEndCallback
from larq_engrams.callbacks.memory import PeakMemoryCallback, current_rss_bytes
from larq_engrams.callbacks.tensorboard import EngramTensorBoard

__all__ = [
    "AccuracyMatrixCallback",
    "ContinualCallback",
    "TaskEndCallback",
    "EngramTensorBoard",
    "PeakMemoryCallback",
    "current_rss_bytes",
]
