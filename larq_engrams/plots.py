"""Figures of a continual run: the accuracy matrix and per-task accuracy over tasks.

Both show accuracy in percent, as the terminal and the summaries do. In the matrix,
cells above the diagonal (task k not trained yet after task t) are measured all the
same (FWT needs them) but drawn hatched on grey and left blank, so that a 0 there never
reads as forgetting; NaN cells (no network to evaluate, e.g. an engram not allocated
yet in task-IL) read "n/a".
"""
import io

import matplotlib
import numpy as np
from matplotlib.figure import Figure  # not pyplot: the user's backend is left alone

__all__ = ["plot_accuracy_matrix", "plot_task_accuracies", "plot_engram_overlap", "plot_stability_plasticity",
           "plot_accuracy_against_bytes", "plot_long_sequence",
           "figure_to_png", "run_title"]

_UNTRAINED_FACE = "#d9d9d9"
# Heat maps of at most this many tasks write each cell's value; larger ones are drawn
# plain and no larger (at 100 tasks the 10,000 labels took most of a task's time).
ANNOTATE_UP_TO = 16


def run_title(what, label=None):
    """`what` with the run's label (method, scenario, seed) on a second line."""
    return f"{what}\n{label}" if label else what


def _percent_text(value):
    """One decimal (99.5 stays 99.5); an exact 100 % prints as 100."""
    return "100" if value == 1.0 else f"{100.0 * value:.1f}"


def plot_accuracy_matrix(R, title=None, ax=None, label=None):
    """Heat map of R in % (rows: after training task t; columns: tested on task k).

    The title states ACC, the mean of the last row over the tasks trained by then.
    Cells of tasks not trained yet (k > t) are hatched grey and left blank: their
    measured values are in the JSON and CSV (FWT uses them). `label` names the run
    (e.g. "engram_bnn · split_mnist class-IL · seed 0"); it goes under the title.
    Beyond ANNOTATE_UP_TO tasks the cells carry no text or hatching (untrained and
    unmeasured ones are light grey) and the figure stops growing."""
    R = np.asarray(R, np.float64)
    T, K = R.shape
    cells = max(T, K) <= ANNOTATE_UP_TO
    if ax is None:
        width, height = (K, T) if cells else (ANNOTATE_UP_TO, ANNOTATE_UP_TO * T / max(T, K))
        ax = Figure(figsize=(2.2 + 0.8 * width, 1.6 + 0.7 * height)).subplots()
    untrained = np.triu(np.ones((T, K), bool), k=1)
    trained = np.ma.masked_array(100.0 * R, mask=untrained | np.isnan(R))
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.9")
    image = ax.imshow(trained, vmin=0.0, vmax=100.0, cmap=cmap, aspect="equal" if cells else "auto")
    for (t, k), value in (np.ndenumerate(R) if cells else ()):
        if untrained[t, k]:
            ax.add_patch(_hatched_cell(k, t))
        elif np.isnan(value):
            ax.text(k, t, "n/a", ha="center", va="center", color="0.35", fontsize=9)
        else:
            ax.text(k, t, _percent_text(value), ha="center", va="center",
                    color="white" if value < 0.6 else "black", fontsize=10)
    note = ("\n(hatched: task k not trained yet)" if cells else "\n(grey: not trained yet, or not evaluated)")
    ax.set_xlabel("tested on task k" + (note if untrained.any() or not cells else ""))
    ax.set_ylabel("after training task t")
    ax.set_xticks(range(0, K, max(1, -(-K // ANNOTATE_UP_TO))))
    ax.set_yticks(range(0, T, max(1, -(-T // ANNOTATE_UP_TO))))
    seen = R[-1, : min(T, K)]
    acc = f" · ACC {100.0 * np.nanmean(seen):.1f} %" if np.isfinite(seen).any() else ""
    ax.set_title(run_title((title or "accuracy matrix R[t][k] (%)") + acc, label), fontsize=10)
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
    task, starting when it is trained), plus the running mean over tasks seen so far.

    The y axis spans the plotted values (in steps of 5 %, 0 % points drawn whole), so
    lines that stay within a few points of each other remain apart; the legend sits
    beside the axes, never over the data."""
    R = 100.0 * np.asarray(R, np.float64)
    T = len(R)
    if ax is None:
        ax = Figure(figsize=(7.2, 4)).subplots()
    shown = [R[k:, k] for k in range(T)]
    mean = [np.nanmean(R[t, : t + 1]) for t in range(T)]
    for k in range(T):
        ax.plot(range(k, T), shown[k], marker="o", label=f"task {k}", clip_on=False, zorder=3)
    ax.plot(range(T), mean, "k--", lw=2, label="mean over\nseen tasks", clip_on=False, zorder=4)
    values = np.concatenate([*shown, mean])
    low = np.nanmin(values) if np.isfinite(values).any() else 0.0
    bottom = max(0.0, 5.0 * np.floor((low - 2.0) / 5.0))
    ax.set_ylim(bottom - 0.02 * (100.0 - bottom), 100.0 + 0.02 * (100.0 - bottom))
    ax.set_xlabel("after training task t")
    ax.set_ylabel("accuracy (%)")
    ax.set_xticks(range(T))
    ax.set_xlim(-0.2, T - 0.8)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    ax.set_title(run_title(title or "accuracy per task over the sequence", label), fontsize=10)
    ax.figure.tight_layout()
    return ax.figure


def plot_engram_overlap(overlap, tasks=None, title=None, ax=None, annotate_up_to=None):
    """Heat map of engram overlap |E_s and E_t| / N in % (diagonal: each engram's size)
    for the allocated engrams `tasks` (default 0..K-1). Up to `annotate_up_to` engrams
    each cell shows its value; beyond, the figure stops growing (a long sequence's
    K^2 labels would not be read, and would take most of a task's time to draw)."""
    overlap = 100.0 * np.asarray(overlap, np.float64)
    K = len(overlap)
    tasks = list(range(K)) if tasks is None else list(tasks)
    annotate_up_to = ANNOTATE_UP_TO if annotate_up_to is None else int(annotate_up_to)
    annotate = K <= annotate_up_to
    if ax is None:
        side = min(K, annotate_up_to)
        ax = Figure(figsize=(1.8 + 0.6 * side, 1.4 + 0.55 * side)).subplots()
    image = ax.imshow(overlap, vmin=0.0, vmax=max(1e-9, overlap.max()), cmap="magma")
    if annotate:
        for (s, t), value in np.ndenumerate(overlap):
            ax.text(t, s, f"{value:.1f}", ha="center", va="center", fontsize=9,
                    color="white" if value < 0.6 * overlap.max() else "black")
    ticks = range(0, K, max(1, -(-K // annotate_up_to)))  # at most annotate_up_to tick labels
    ax.set_xticks(ticks, [str(tasks[i]) for i in ticks])
    ax.set_yticks(ticks, [str(tasks[i]) for i in ticks])
    ax.set_xlabel("engram t")
    ax.set_ylabel("engram s")
    ax.set_title(title or "overlap |E_s ∩ E_t| / N (%)", fontsize=10)
    ax.figure.colorbar(image, ax=ax, fraction=0.046).set_label("% of the layer's units")
    ax.figure.tight_layout()
    return ax.figure


def plot_stability_plasticity(trade_off, highlight=("engram_bnn", "engram")):
    """One panel per scenario: learning accuracy (plasticity, the mean of R's diagonal)
    against forgetting (stability), one point per method with its s.e.m. as error bars.

    Args:
        trade_off: {scenario: {method: {"learning": (mean, sem), "forgetting": (mean, sem)}}},
            fractions.
        highlight: methods drawn in color and bold; the others in grey.
    """
    labels = list(trade_off)
    columns = min(4, len(labels))
    rows = -(-len(labels) // columns)
    figure = Figure(figsize=(3.6 * columns, 3.2 * rows))
    axes = np.atleast_1d(figure.subplots(rows, columns)).ravel()
    colors = {name: color for name, color in zip(highlight, ("tab:red", "tab:blue", "tab:green"))}
    for ax, label in zip(axes, labels):
        # The highlighted methods last (on top), their labels apart: they often coincide.
        order = sorted(trade_off[label], key=lambda m: (m in colors, -list(colors).index(m) if m in colors else 0))
        for method in order:
            point = trade_off[label][method]
            x, y = 100 * np.asarray(point["forgetting"]), 100 * np.asarray(point["learning"])
            color = colors.get(method, "0.55")
            ax.errorbar(x[0], y[0], xerr=x[1], yerr=y[1], fmt="o", ms=4, color=color)
            offset = (3, 2) if method not in colors else (4, 3 - 9 * list(colors).index(method))
            ax.annotate(method, (x[0], y[0]), fontsize=6, color=color, xytext=offset, textcoords="offset points",
                        fontweight="bold" if method in colors else "normal")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("forgetting (%)  ← more stable", fontsize=8)
        ax.set_ylabel("learning accuracy (%)  ↑ more plastic", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[len(labels):]:
        ax.set_visible(False)
    figure.suptitle("Stability (forgetting) against plasticity (learning accuracy), per scenario", fontsize=10)
    figure.tight_layout()
    return figure


def plot_accuracy_against_bytes(points, floor=1024):
    """One panel per scenario: ACC (%) against the bytes a method keeps besides its
    network's weights (log axis), one point per method and budget with its s.e.m.

    Args:
        points: {scenario: {method: {"acc": (mean, sem), "bytes": int}}}, ACC a fraction.
        floor: where methods that keep nothing are drawn (marked "none" on the axis).
    """
    labels = list(points)
    figure = Figure(figsize=(5.2 * max(1, len(labels)), 4.2))
    axes = np.atleast_1d(figure.subplots(1, max(1, len(labels))))
    for ax, label in zip(axes, labels):
        for method, point in points[label].items():
            x = max(point["bytes"], floor)
            ours = method.startswith("engram")
            color = "tab:red" if ours else ("tab:blue" if method.split("@")[0] in ("er", "derpp", "er_bnn")
                                            else "0.45")
            ax.errorbar(x, 100 * point["acc"][0], yerr=100 * point["acc"][1], fmt="o", ms=4, color=color)
            ax.annotate(method, (x, 100 * point["acc"][0]), fontsize=6, color=color, xytext=(3, 2),
                        textcoords="offset points", fontweight="bold" if ours else "normal")
        ax.set_xscale("log")
        ax.axvline(floor * 1.5, color="0.8", lw=0.8)
        ax.set_xlabel(f"bytes kept besides the network's weights (log; ≤ {floor} B: none)", fontsize=8)
        ax.set_ylabel("class-IL ACC (%)", fontsize=8)
        ax.set_title(label, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, which="both")
    figure.suptitle("Accuracy against extra state: engram models (red), replay (blue), others (grey)", fontsize=10)
    figure.tight_layout()
    return figure


def plot_long_sequence(series):
    """Two panels against the tasks trained: the accuracy on the tasks seen so far (%,
    the mean of row t's measured entries, on the rows that measured past tasks: an
    estimate where the row was sampled), and the seconds each task took to train (on a
    log scale).

    Args:
        series: {label: {"tasks": [t + 1 ...], "acc": [fraction ...], "seconds": [...]}};
            "acc" may hold NaN where a row was not evaluated (those points are skipped).
    """
    rows = -(-len(series) // 2)  # one legend for both panels, below them, two labels a row
    height = 3.6 + 0.2 * rows
    figure = Figure(figsize=(10.4, height))
    acc_ax, time_ax = figure.subplots(1, 2)
    # one colour per run: beyond the default cycle's ten, tab20's (no two curves alike)
    colours = matplotlib.colormaps["tab10" if len(series) <= 10 else "tab20"].colors
    for i, (label, run) in enumerate(series.items()):
        tasks, acc = np.asarray(run["tasks"]), 100 * np.asarray(run["acc"], dtype=float)
        measured = ~np.isnan(acc)
        colour = colours[i % len(colours)]
        acc_ax.plot(tasks[measured], acc[measured], marker="o", ms=2.5, lw=1, label=label, color=colour)
        time_ax.plot(tasks, run["seconds"], lw=1, label=label, color=colour)
    acc_ax.set_ylabel("accuracy on the tasks seen so far (%)", fontsize=8)
    # log scale: one stalled task (a machine pause, minutes) must not flatten the rest
    time_ax.set_ylabel("seconds to train the task (log scale)", fontsize=8)
    time_ax.set_yscale("log")
    for ax in (acc_ax, time_ax):
        ax.set_xlabel("tasks trained", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    if series:  # the panels share their labels: a legend inside either would hide curves
        figure.legend(*acc_ax.get_legend_handles_labels(), loc="lower center", ncol=2, fontsize=7, frameon=False)
    figure.tight_layout(rect=(0, (0.2 * rows + 0.1) / height, 1, 1))
    return figure


def figure_to_png(figure, path=None):
    """Returns the figure as PNG bytes (and writes it to `path` if given)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    data = buffer.getvalue()
    if path is not None:
        with open(path, "wb") as f:
            f.write(data)
    return data
