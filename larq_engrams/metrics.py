"""Continual-learning metrics on the accuracy matrix (docs/method.md, section 6).

R[t][k] is the accuracy on task k's test set after training on tasks 0..t (shape T x T;
entries above the diagonal are accuracies on tasks not yet trained). Accuracies are
fractions in [0, 1]. Every function is pure NumPy.
"""
import numpy as np

__all__ = [
    "average_accuracy",
    "backward_transfer",
    "forgetting",
    "forward_transfer",
    "average_incremental_accuracy",
    "estimated_metrics",
    "is_complete",
    "learning_accuracy",
    "mean_and_sem",
    "summarize",
]


def _matrix(R):
    """R as floats. Its diagonal and last row must be measured; rows in between may be
    sampled (NaN where not measured: `ContinualTrainer(evaluate_every=..., past_tasks=...)`),
    and then the metrics that read them are estimates (`estimated_metrics`)."""
    R = np.asarray(R, np.float64)
    if R.ndim != 2 or R.shape[0] != R.shape[1] or R.shape[0] < 1:
        raise ValueError(f"R must be a square T x T matrix, got shape {R.shape}.")
    if np.isnan(np.diag(R)).any() or np.isnan(R[-1]).any():
        raise ValueError("R has missing entries on its diagonal or in its last row.")
    return R


def is_complete(R):
    """Whether every entry on and below R's diagonal was measured."""
    R = np.asarray(R, np.float64)
    return not np.isnan(R[np.tril_indices(len(R))]).any()


def estimated_metrics(R):
    """The metrics of `summarize` that are estimates on R: none for a complete R;
    forgetting (its max over the measured rows only) and the average incremental
    accuracy (over the measured entries) when rows were sampled. ACC, BWT, FWT and the
    learning accuracy read only the diagonal, the last row and R[t][t + 1], which are
    always measured, so they stay exact."""
    return [] if is_complete(R) else ["forgetting", "avg_incremental_acc"]


def average_accuracy(R):
    """ACC = (1/T) sum_k R[T-1][k]: the unweighted mean over tasks after the last one."""
    R = _matrix(R)
    return float(R[-1].mean())


def backward_transfer(R):
    """BWT = 1/(T-1) sum_{k<T-1} (R[T-1][k] - R[k][k])  (Lopez-Paz & Ranzato 2017).

    Negative values are forgetting. Undefined (NaN) for T = 1.
    """
    R = _matrix(R)
    T = len(R)
    if T < 2:
        return float("nan")
    return float(np.mean([R[-1, k] - R[k, k] for k in range(T - 1)]))


def forgetting(R):
    """F = 1/(T-1) sum_{k<T-1} (max_{t<T-1} R[t][k] - R[T-1][k])  (Chaudhry et al. 2018).

    As in docs/method.md (section 6) and Chaudhry et al., the max runs over every row t < T-1 (rows
    before task k was trained included), skipping entries that could not be measured
    (NaN above the diagonal: an engram not allocated yet in task-IL). NaN for T = 1.
    """
    R = _matrix(R)
    T = len(R)
    if T < 2:
        return float("nan")
    return float(np.mean([np.nanmax(R[: T - 1, k]) - R[-1, k] for k in range(T - 1)]))


def forward_transfer(R, baseline):
    """FWT = 1/(T-1) sum_{k>=1} (R[k-1][k] - b_k)  (Lopez-Paz & Ranzato 2017).

    Args:
        baseline: b, the accuracy of the untrained model on each task (length T).
    """
    R = _matrix(R)
    b = np.asarray(baseline, np.float64)
    T = len(R)
    if b.shape != (T,):
        raise ValueError(f"baseline must have one accuracy per task ({T}), got shape {b.shape}.")
    if T < 2:
        return float("nan")
    return float(np.mean([R[k - 1, k] - b[k] for k in range(1, T)]))


def learning_accuracy(R):
    """LA = (1/T) sum_k R[k][k]: the accuracy on each task right after training on it,
    the plasticity side of the stability-plasticity trade-off (Riemer et al. 2019;
    Mirzadeh et al. 2020). Forgetting is the stability side."""
    R = _matrix(R)
    return float(np.mean(np.diag(R)))


def average_incremental_accuracy(R):
    """(1/T) sum_t mean_{k<=t} R[t][k]  (Rebuffi et al. 2017). With sampled rows, the
    mean over each row's measured entries (an estimate)."""
    R = _matrix(R)
    return float(np.mean([np.nanmean(R[t, : t + 1]) for t in range(len(R))]))


def mean_and_sem(values):
    """Mean and standard error of the mean (s / sqrt(n), s with n - 1 dof) over seeds.

    The standard error is 0.0 for a single value.
    """
    v = np.asarray(values, np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError("mean_and_sem needs a non-empty 1-D sequence.")
    sem = float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else 0.0
    return float(v.mean()), sem


def format_mean_and_sem(pair, count, scale=100.0, digits=1):
    """"96.6 ± 0.1" for a `mean_and_sem` pair over `count` > 1 values; "96.6" for one
    value, whose spread was not measured (scaled by `scale`: percent by default)."""
    mean = f"{scale * pair[0]:.{digits}f}"
    return mean if count <= 1 else f"{mean} ± {scale * pair[1]:.{digits}f}"


def summarize(R, baseline=None):
    """Every metric above as a dict (FWT only when `baseline` is given)."""
    out = {
        "acc": average_accuracy(R),
        "bwt": backward_transfer(R),
        "forgetting": forgetting(R),
        "avg_incremental_acc": average_incremental_accuracy(R),
        "learning_acc": learning_accuracy(R),
    }
    if baseline is not None:
        out["fwt"] = forward_transfer(R, baseline)
    return out  # `estimated_metrics(R)` names the estimates
