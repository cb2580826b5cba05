"""Figures of a continual run: the accuracy matrix and per-task accuracy over tasks."""
import io

import numpy as np
from matplotlib.figure import Figure  # not pyplot: the user's backend is left alone

__all__ = ["plot_accuracy_matrix", "plot_task_accuracies", "figure_to_png"]


def plot_accuracy_matrix(R, title=None, ax=None):
    """Heat map of R (rows: after training task t; columns: tested on task k)."""
    R = np.asarray(R, np.float64)
    if ax is None:
        ax = Figure(figsize=(1.0 + 0.6 * len(R), 0.8 + 0.6 * len(R))).subplots()
    image = ax.imshow(R, vmin=0.0, vmax=1.0, cmap="viridis")
    for (t, k), value in np.ndenumerate(R):
        if not np.isnan(value):
            ax.text(k, t, f"{100 * value:.0f}", ha="center", va="center",
                    color="white" if value < 0.6 else "black", fontsize=8)
    ax.set_xlabel("tested on task k")
    ax.set_ylabel("after training task t")
    ax.set_xticks(range(R.shape[1]))
    ax.set_yticks(range(R.shape[0]))
    ax.set_title(title or "accuracy matrix R[t][k] (%)")
    ax.figure.colorbar(image, ax=ax, fraction=0.046)
    ax.figure.tight_layout()
    return ax.figure


def plot_task_accuracies(R, title=None, ax=None):
    """Accuracy on each task as training moves through the sequence (one line per task,
    starting when it is trained), plus the running mean over tasks seen so far."""
    R = np.asarray(R, np.float64)
    T = len(R)
    if ax is None:
        ax = Figure(figsize=(6, 4)).subplots()
    for k in range(T):
        ax.plot(range(k, T), R[k:, k], marker="o", label=f"task {k}")
    ax.plot(range(T), [R[t, : t + 1].mean() for t in range(T)], "k--", lw=2, label="mean seen")
    ax.set_xlabel("after training task")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0.0, 1.02)
    ax.set_xticks(range(T))
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(title or "accuracy per task over the sequence")
    ax.figure.tight_layout()
    return ax.figure


def figure_to_png(figure, path=None):
    """Returns the figure as PNG bytes (and writes it to `path` if given)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    data = buffer.getvalue()
    if path is not None:
        with open(path, "wb") as f:
            f.write(data)
    return data
