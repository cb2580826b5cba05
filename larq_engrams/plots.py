"""Figures of a continual run: the accuracy matrix and per-task accuracy over tasks.

Both show accuracy in percent, as the terminal and the summaries do. In the matrix,
cells above the diagonal (task k not trained yet after task t) are measured all the
same (FWT needs them) but drawn hatched on grey, with their value in small grey type,
so that a 0 there never reads as forgetting; NaN cells (no network to evaluate, e.g. an
engram not allocated yet in task-IL) read "n/a".
"""
import io

import numpy as np
from matplotlib.figure import Figure  # not pyplot: the user's backend is left alone

__all__ = ["plot_accuracy_matrix", "plot_task_accuracies", "figure_to_png", "run_title"]

_UNTRAINED_FACE = "#d9d9d9"


def run_title(what, label=None):
    """`what` with the run's label (method, scenario, seed) on a second line."""
    return f"{what}\n{label}" if label else what


def _percent_text(value):
    """One decimal (99.5 stays 99.5); an exact 100 % prints as 100."""
    return "100" if value == 1.0 else f"{100.0 * value:.1f}"


def plot_accuracy_matrix(R, title=None, ax=None, label=None):
    """Heat map of R in % (rows: after training task t; columns: tested on task k).

    `label` names the run (e.g. "engram_bnn · split_mnist class-IL · seed 0"); it goes
    under the title."""
    R = np.asarray(R, np.float64)
    T, K = R.shape
    if ax is None:
        ax = Figure(figsize=(1.6 + 0.65 * K, 1.2 + 0.6 * T)).subplots()
    untrained = np.triu(np.ones((T, K), bool), k=1)
    trained = np.ma.masked_array(100.0 * R, mask=untrained | np.isnan(R))
    image = ax.imshow(trained, vmin=0.0, vmax=100.0, cmap="viridis")
    for (t, k), value in np.ndenumerate(R):
        if untrained[t, k]:
            ax.add_patch(_hatched_cell(k, t))
        if np.isnan(value):
            ax.text(k, t, "n/a", ha="center", va="center", color="0.35", fontsize=7)
        elif untrained[t, k]:
            ax.text(k, t, _percent_text(value), ha="center", va="center", color="0.35", fontsize=6, style="italic")
        else:
            ax.text(k, t, _percent_text(value), ha="center", va="center",
                    color="white" if value < 0.6 else "black", fontsize=7)
    ax.set_xlabel("tested on task k" + ("\n(hatched: task k not trained yet)" if untrained.any() else ""))
    ax.set_ylabel("after training task t")
    ax.set_xticks(range(K))
    ax.set_yticks(range(T))
    ax.set_title(run_title(title or "accuracy matrix R[t][k] (%)", label), fontsize=9)
    bar = ax.figure.colorbar(image, ax=ax, fraction=0.046)
    bar.set_label("accuracy (%)")
    ax.figure.tight_layout()
    return ax.figure


def _hatched_cell(k, t):
    from matplotlib.patches import Rectangle

    return Rectangle((k - 0.5, t - 0.5), 1.0, 1.0, facecolor=_UNTRAINED_FACE, edgecolor="0.6",
                     hatch="///", linewidth=0.0)


def plot_task_accuracies(R, title=None, ax=None, label=None):
    """Accuracy (%) on each task as training moves through the sequence (one line per
    task, starting when it is trained), plus the running mean over tasks seen so far."""
    R = 100.0 * np.asarray(R, np.float64)
    T = len(R)
    if ax is None:
        ax = Figure(figsize=(6, 4)).subplots()
    for k in range(T):
        ax.plot(range(k, T), R[k:, k], marker="o", label=f"task {k}")
    ax.plot(range(T), [np.nanmean(R[t, : t + 1]) for t in range(T)], "k--", lw=2, label="mean over seen tasks")
    ax.set_xlabel("after training task t")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0.0, 102.0)
    ax.set_xticks(range(T))
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(run_title(title or "accuracy per task over the sequence", label), fontsize=9)
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
