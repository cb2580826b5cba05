"""The paper's three claims beside the numbers measured here: which hold, which do not.

Aguilar et al. (2025) claim, for engramBNN:

1. **class-IL**: accuracy far above the ~20 % of regularization methods. Checked per
   class-IL scenario of the grid: `engram_bnn` ACC against the best of `ewc`,
   `online_ewc` and `si`. It holds when the mean minus one s.e.m. is above 20 % and
   above the best regularization method's mean plus its s.e.m.
2. **domain-IL**: accuracy comparable to full-precision methods. Checked per
   domain-IL scenario: `engram_bnn` ACC against the best full-precision continual
   learner (`ewc`, `online_ewc`, `si`, `lwf`; `joint`, which trains on all data so far,
   is shown as the upper reference, not compared). "Comparable" is read as: no more
   than `--tolerance` points (default 2) below that best mean.
A. **stability-plasticity**: "an improved stability vs. plasticity trade-off". Checked
   per scenario from every run's recorded accuracy matrix R: learning accuracy (the
   mean of R's diagonal, `metrics.learning_accuracy`: plasticity) and forgetting
   (stability), `engram_bnn` against `mbnn`, `bnn`, `ewc` and `si`. It holds where,
   against each of them, engram_bnn forgets less (its mean forgetting plus s.e.m.
   below theirs minus s.e.m.) and learns no more than `--tolerance` points less. The
   figure `stability_plasticity.png` draws every method of every scenario.
R. **what the engrams add** (this package's question, not the paper's): per class- and
   domain-IL scenario, `engram_bnn` against its router alone (`slda_rf`: the same
   random features and statistics, no network): it holds where engram_bnn is above it
   beyond both s.e.m.s. And against replay at the bytes engram_bnn keeps to learn (the
   best of `er`, `derpp`, `er_bnn` at `@equal`; the best at 200 and 1,000 examples
   beside it, with the bytes each keeps): it holds where engram_bnn is above the best
   at equal bytes beyond both s.e.m.s.
M. **metaplasticity**: "metaplastic optimization enhances synaptic stability further".
   Checked per scenario: `engram_bnn` (engrams and MetaplasticAdam) against `engram`
   (engrams and Adam). It holds where engram_bnn forgets less beyond both s.e.m.s and
   its ACC is not lower beyond them. And per scenario of the ablation
   (`experiments/ablation.py`, its table.json via `--ablation`): at each engram
   fraction and excitability, the strongest m tried against m = 0 (Adam), by the same
   rule, with the networks' own accuracy (task given) beside it; and `mbnn` against
   `bnn` (metaplasticity without engrams). A row of one seed gets no verdict.
3. **efficiency**: peak RAM under 20 % and peak GPU memory under 5 % of the
   full-precision baselines'. Checked two ways, both ratios `engram_bnn / baseline` for
   the baselines `ewc`, `si`, `finetune` (the MLP without protection):
   - the grid's runs: the peak resident set of each run's own process, per scenario
     (and GPU peaks, when a GPU was there);
   - the benchmark (`experiments/benchmark.py --output=...json`): the memory a model
     of the grid's width adds over a 16-16 one, the variables kept, and the whole
     process.
   It holds only where every ratio of a measure is below 0.2 (0.05 for GPU).

And this package's own target, which the paper's efficiency argument implies: an engram
trains and runs only a small part of the network, so **engram_bnn costs less time and
memory than a plain BNN** (`bnn`, the same width and binarization). Ratios
`engram_bnn / bnn`:
   - the grid's runs: the peak resident set of each run's process, over the finished
     scenarios (not their times: the families' epochs per task differ, and a run's time
     includes tracing and whatever else the machine did meanwhile);
   - the benchmark, where time is measured in one process on like terms: seconds per
     training step at the grid's width, the median epoch of `model.fit`, and the memory
     the model adds over a 16-16 one.
   It holds where every ratio of a measure is below 1.

    python experiments/claims.py --grid_dir=results/paper --benchmark=results/benchmark.json \
        --ablation=results/ablation/table.json
    # -> results/paper/claims.md, claims_summary.md (one row per claim), claims.json
"""
import json
import os

import numpy as np

from absl import app, flags

import cli  # noqa: F401,I001  (the scripts' shared flag handling and quiet start-up)

from larq_engrams.methods import REPLAY
from larq_engrams.metrics import forgetting, learning_accuracy, mean_and_sem
from larq_engrams.plots import figure_to_png, plot_stability_plasticity

REGULARIZATION = ("ewc", "online_ewc", "si")
TRADE_OFF_BASELINES = ("mbnn", "bnn", "ewc", "si")
FULL_PRECISION = ("ewc", "online_ewc", "si", "lwf")
MEMORY_BASELINES = ("ewc", "si", "finetune")
RAM_LIMIT, GPU_LIMIT = 0.20, 0.05

FLAGS = flags.FLAGS
flags.DEFINE_string("grid_dir", "results/paper", "The grid's --outdir (its table.json).")
flags.DEFINE_string("benchmark", "results/benchmark.json", "benchmark.py's --output; '' to leave it out.")
flags.DEFINE_float("tolerance", 2.0, "Domain-IL: points below the best full-precision method still called comparable.")
flags.register_validator("tolerance", lambda t: t >= 0, "--tolerance must be >= 0")
flags.DEFINE_string("ablation", "results/ablation/table.json",
                    "experiments/ablation.py's table.json (claim M); '' to leave it out.")
flags.DEFINE_string("output", None, "Where claims.md/claims.json go (default: --grid_dir).")


def _pct(pair):
    return f"{100 * pair[0]:.1f} ± {100 * pair[1]:.1f} %"


def class_il_claim(summaries):
    """Rows (scenario, measured, verdict) for every class-IL scenario with `engram_bnn`."""
    rows = []
    for label, methods in summaries.items():
        if "-class" not in label or "engram_bnn" not in methods:
            continue
        ours = methods["engram_bnn"]["acc"]
        present = [m for m in REGULARIZATION if m in methods]
        if not present:
            continue
        best = max(present, key=lambda m: methods[m]["acc"][0])
        other = methods[best]["acc"]
        holds = ours[0] - ours[1] > 0.20 and ours[0] - ours[1] > other[0] + other[1]
        rows.append((label, f"engram_bnn {_pct(ours)}; best regularization method ({best}) {_pct(other)}",
                     holds))
    return rows


def domain_il_claim(summaries, tolerance):
    """Rows for every domain-IL scenario with `engram_bnn`: against the best full-precision
    continual learner, `tolerance` in points."""
    rows = []
    for label, methods in summaries.items():
        if "-domain" not in label or "engram_bnn" not in methods:
            continue
        present = [m for m in FULL_PRECISION if m in methods]
        if not present:
            continue
        ours = methods["engram_bnn"]["acc"]
        best = max(present, key=lambda m: methods[m]["acc"][0])
        other = methods[best]["acc"]
        gap = 100 * (ours[0] - other[0])
        joint = f"; joint (upper reference) {_pct(methods['joint']['acc'])}" if "joint" in methods else ""
        rows.append((label, f"engram_bnn {_pct(ours)}; best full-precision method ({best}) {_pct(other)}; "
                            f"difference {gap:+.1f} points{joint}", gap >= -tolerance))
    return rows


def recorded_trade_off(grid_dir, summaries):
    """{scenario: {method: {"learning": (mean, sem), "forgetting": (mean, sem)}}} from
    every finished run's accuracy matrix R (`<grid_dir>/<scenario>/<method>/seed_*/result.json`)."""
    out = {}
    for label, methods in summaries.items():
        for method in methods:
            folder = os.path.join(grid_dir, label, method)
            matrices = []
            for seed in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
                path = os.path.join(folder, seed, "result.json")
                if seed.startswith("seed_") and os.path.exists(path):
                    with open(path) as f:
                        matrices.append(np.asarray(json.load(f)["accuracy_matrix"], float))
            if matrices:
                out.setdefault(label, {})[method] = {
                    "learning": mean_and_sem([learning_accuracy(R) for R in matrices]),
                    "forgetting": mean_and_sem([forgetting(R) for R in matrices])}
    return out


def _below(a, b):
    """a's mean plus s.e.m. below b's mean minus s.e.m."""
    return a[0] + a[1] < b[0] - b[1]


def _mib(summary):
    kept = summary.get("state_bytes")
    return "" if not kept else f", {(kept['learn'] + kept['predict']) / 2**20:.2f} MiB"


def router_claim(summaries):
    """Rows for claim R, first part: engram_bnn against its router alone (slda_rf)."""
    rows = []
    for label, methods in summaries.items():
        if "-task" in label or "engram_bnn" not in methods or "slda_rf" not in methods:
            continue
        ours, router = methods["engram_bnn"], methods["slda_rf"]
        rows.append((label, f"engram_bnn {_pct(ours['acc'])}{_mib(ours)}; its router alone (slda_rf) "
                            f"{_pct(router['acc'])}{_mib(router)}", _below(router["acc"], ours["acc"])))
    return rows


def replay_claim(summaries):
    """Rows for claim R, second part: engram_bnn against the best replay at equal bytes
    (and, beside it, at 200 and 1,000 examples)."""
    rows = []
    for label, methods in summaries.items():
        equal = [f"{m}@equal" for m in REPLAY if f"{m}@equal" in methods]
        if "engram_bnn" not in methods or not equal:
            continue
        ours = methods["engram_bnn"]
        parts = [f"engram_bnn {_pct(ours['acc'])}{_mib(ours)}"]
        for budget in ("equal", "1000", "200"):
            present = [f"{m}@{budget}" for m in REPLAY if f"{m}@{budget}" in methods]
            if present:
                best = max(present, key=lambda m: methods[m]["acc"][0])
                parts.append(f"best at {budget}{' bytes' if budget == 'equal' else ' examples'}: {best} "
                             f"{_pct(methods[best]['acc'])}{_mib(methods[best])}")
        best_equal = max(equal, key=lambda m: methods[m]["acc"][0])
        rows.append((label, "; ".join(parts), _below(methods[best_equal]["acc"], ours["acc"])))
    return rows


def trade_off_claim(trade_off, tolerance):
    """Rows for claim A: engram_bnn's learning accuracy and forgetting against each of
    `TRADE_OFF_BASELINES` present, per scenario."""
    rows = []
    for label, methods in trade_off.items():
        present = [m for m in TRADE_OFF_BASELINES if m in methods]
        if "engram_bnn" not in methods or not present:
            continue
        ours = methods["engram_bnn"]
        holds = all(_below(ours["forgetting"], methods[m]["forgetting"])
                    and ours["learning"][0] >= methods[m]["learning"][0] - tolerance / 100 for m in present)
        text = "; ".join(f"{m} {_pct(methods[m]['learning'])} / {_pct(methods[m]['forgetting'])}"
                         for m in ("engram_bnn", *present))
        rows.append((label, "learning accuracy / forgetting: " + text, holds))
    return rows


def metaplasticity_claim(summaries, trade_off):
    """Rows for claim M: engram_bnn against engram, per scenario."""
    rows = []
    for label, methods in trade_off.items():
        if "engram_bnn" not in methods or "engram" not in methods:
            continue
        ours, theirs = methods["engram_bnn"], methods["engram"]
        acc_ours, acc_theirs = summaries[label]["engram_bnn"]["acc"], summaries[label]["engram"]["acc"]
        holds = _below(ours["forgetting"], theirs["forgetting"]) and not _below(acc_ours, acc_theirs)
        rows.append((label, f"ACC / forgetting: engram_bnn {_pct(acc_ours)} / {_pct(ours['forgetting'])}; "
                            f"engram {_pct(acc_theirs)} / {_pct(theirs['forgetting'])}", holds))
    return rows


def ablation_metaplasticity_rows(ablation):
    """Rows for claim M from the ablation's table: per scenario and (engram fraction,
    excitability), the largest m against m = 0; and mbnn against bnn."""
    rows = []
    for scenario, variants in ablation.items():
        groups, plain = {}, {}
        for name, row in variants.items():
            if row.get("method") == "engram_bnn":
                f = row["factors"]
                if not isinstance(f["m"], (int, float)):
                    continue  # a per-layer strength: searched, not a claim row
                groups.setdefault((f["engram_fraction"], f["excitability"]), {})[f["m"]] = row
            else:
                plain[row.get("method", name)] = row
        pairs = [(f"engram fraction {rho:g}, excitability {beta:g}", f"m=0 / m={max(by_m):g}", by_m[0.0],
                  by_m[max(by_m)]) for (rho, beta), by_m in sorted(groups.items()) if 0.0 in by_m and len(by_m) > 1]
        if "bnn" in plain and "mbnn" in plain:
            pairs.append(("no engrams", "bnn / mbnn", plain["bnn"], plain["mbnn"]))
        for where, names, adam, metaplastic in pairs:
            seeds = min(adam["seeds"], metaplastic["seeds"])
            # one seed measures no spread: no verdict beyond the s.e.m. can be given
            holds = None if seeds < 2 else (_below(metaplastic["forgetting"], adam["forgetting"])
                                            and not _below(metaplastic["acc"], adam["acc"]))
            text = (f"{names}: ACC {_pct(adam['acc'])} / {_pct(metaplastic['acc'])}; forgetting "
                    f"{_pct(adam['forgetting'])} / {_pct(metaplastic['forgetting'])}")
            if adam.get("acc_task_given"):
                text += (f"; the networks alone, task given, {_pct(adam['acc_task_given'])} / "
                         f"{_pct(metaplastic['acc_task_given'])}")
            rows.append((f"ablation {scenario}, {where}", f"{text} ({seeds} seed{'s' if seeds > 1 else ''})", holds))
    return rows


def _ratios(values, limit, baselines=MEMORY_BASELINES):
    """(text, holds) for `engram_bnn / baseline` over the baselines present in `values`."""
    present = [b for b in baselines if values.get(b)]
    if not values.get("engram_bnn") or not present:
        return None
    ratios = {b: values["engram_bnn"] / values[b] for b in present}
    text = ", ".join(f"x{r:.2f} of {b}" for b, r in ratios.items())
    return text, all(r < limit for r in ratios.values())


def _model_memory(peaks):
    """What a model of the benchmark's width adds to the process: its peak RSS minus a 16-16 one's."""
    return peaks["peak"] - peaks["tiny"]


def memory_claim(summaries, benchmark):
    """Rows for peak RAM and GPU memory: from the grid's runs and from the benchmark."""
    rows = []
    for label, methods in summaries.items():
        for key, limit, what in (("peak_rss_bytes", RAM_LIMIT, "peak RSS of each run's process"),
                                 ("peak_gpu_bytes", GPU_LIMIT, "peak GPU memory")):
            found = _ratios({m: s.get(key) for m, s in methods.items()}, limit)
            if found:
                rows.append((label, f"{what}: {found[0]}", found[1]))
    if benchmark:
        peaks = benchmark["memory"]
        for measure, value in (("model memory (width minus 16-16)", _model_memory),
                               ("variables kept (width minus 16-16)", lambda p: p["state"] - p["state_tiny"]),
                               ("whole-process peak RSS", lambda p: p["peak"])):
            found = _ratios({m: value(p) for m, p in peaks.items()}, RAM_LIMIT)
            if found:
                rows.append(("benchmark", f"{measure}: {found[0]}", found[1]))
        gpu = _ratios({m: p.get("gpu") for m, p in peaks.items()}, GPU_LIMIT)
        rows.append(("benchmark", "peak GPU memory: " + (gpu[0] if gpu else f"not measured (device: "
                                                          f"{benchmark.get('device', 'unknown')})"),
                     gpu[1] if gpu else None))
    return rows


def efficiency_claim(summaries, benchmark, width=None):
    """Rows for engram_bnn against the plain BNN: peak memory of the grid's runs (one row
    over the scenarios), and time and model memory from the benchmark, time at `width`.
    The grid's run times are not compared: the families' settings differ in epochs per
    task, and a run's time includes tracing and whatever else the machine did meanwhile."""
    rows = []
    ratios = {label: methods["engram_bnn"]["peak_rss_bytes"] / methods["bnn"]["peak_rss_bytes"]
              for label, methods in summaries.items()
              if methods.get("engram_bnn", {}).get("peak_rss_bytes") and methods.get("bnn", {}).get("peak_rss_bytes")}
    if ratios:
        low, high = min(ratios.values()), max(ratios.values())
        rows.append((f"grid, {len(ratios)} scenario{'s' if len(ratios) > 1 else ''}",
                     f"peak RSS of each run's process: x{low:.2f}" + (f"-{high:.2f}" if high > low else "") +
                     " of bnn", high < 1.0))
    if benchmark:
        steps = benchmark.get("step_seconds") or {}
        if steps:
            key = str(width) if str(width) in steps else max(steps, key=int)  # the grid's width, else the widest
            found = _ratios(steps[key], 1.0, baselines=("bnn",))
            if found:
                rows.append(("benchmark", f"training step at {key}-{key}: {found[0]}", found[1]))
        fit = dict(benchmark.get("epoch_seconds") or {}).get("fit")
        if fit:
            found = _ratios({m: float(np.median(t)) for m, t in fit.items()}, 1.0, baselines=("bnn",))
            if found:
                rows.append(("benchmark", f"model.fit epoch (median of its epochs): {found[0]}", found[1]))
        found = _ratios({m: _model_memory(p) for m, p in benchmark["memory"].items()}, 1.0, baselines=("bnn",))
        if found:
            rows.append(("benchmark", f"model memory (width minus 16-16): {found[0]}", found[1]))
    return rows


def claims(summaries, benchmark, tolerance, width=None, trade_off=None, ablation=None):
    """{claim: [(where, measured, holds: True / False / None = not measured)]}; `width`:
    the grid's hidden width, at which the benchmark's step times are compared;
    `trade_off`: `recorded_trade_off` of the grid (claims A and M); `ablation`: the
    ablation's table (claim M)."""
    trade_off = trade_off or {}
    return {
        "class-IL accuracy far above the ~20 % of regularization methods": class_il_claim(summaries),
        f"domain-IL accuracy comparable to full-precision methods (within {tolerance:g} points)":
            domain_il_claim(summaries, tolerance),
        "engram_bnn's networks add to its router: above the router alone (slda_rf)": router_claim(summaries),
        "engram_bnn above replay at equal bytes (er, derpp, er_bnn with a buffer of engram_bnn's learning bytes)":
            replay_claim(summaries),
        "(A) an improved stability vs. plasticity trade-off (learning accuracy within "
        f"{tolerance:g} points, less forgetting than mbnn, bnn, ewc, si)": trade_off_claim(trade_off, tolerance),
        "metaplastic optimization enhances synaptic stability further (engram_bnn against engram; the ablation)":
            metaplasticity_claim(summaries, trade_off) + ablation_metaplasticity_rows(ablation or {}),
        "peak RAM < 20 % and peak GPU memory < 5 % of the full-precision baselines'": memory_claim(summaries,
                                                                                                   benchmark),
        "this package's target: engram_bnn costs less time and memory than a plain BNN (bnn)":
            efficiency_claim(summaries, benchmark, width),
    }


def verdict(holds):
    return {True: "holds", False: "does not hold", None: "not measured"}[holds]


def to_markdown(found, sources):
    lines = ["The paper's claims (Aguilar et al. 2025, engramBNN) beside the numbers measured here.", "",
             "Sources: " + "; ".join(sources), "", "| claim | where | measured here | verdict |",
             "|---|---|---|---|"]
    for claim, rows in found.items():
        if not rows:
            lines.append(f"| {claim} | — | no finished scenario of this kind | not measured |")
        for i, (where, measured, holds) in enumerate(rows):  # the claim on its first row only
            lines.append(f"| {claim if i == 0 else ''} | {where} | {measured} | {verdict(holds)} |")
    return "\n".join(lines)


def summary_markdown(found):
    """One row per claim: in how many places it holds, and the exceptions."""
    lines = ["| claim | verdict | exceptions |", "|---|---|---|"]
    for claim, rows in found.items():
        measured = [(where, holds) for where, _, holds in rows if holds is not None]
        held = [where for where, holds in measured if holds]
        failed = list(dict.fromkeys(where for where, holds in measured if not holds))  # once each, in order
        if not measured:
            verdict, exceptions = "not measured", "—"
        elif not failed:
            verdict, exceptions = f"holds ({len(held)} of {len(measured)})", "—"
        elif not held:
            verdict, exceptions = f"does not hold (0 of {len(measured)})", "—"
        elif len(held) >= len(failed):
            verdict, exceptions = f"holds in {len(held)} of {len(measured)}", "not in " + ", ".join(failed)
        else:
            verdict = f"does not hold in {len(measured) - len(held)} of {len(measured)}"
            exceptions = "holds only in " + ", ".join(dict.fromkeys(held))
        lines.append(f"| {claim} | {verdict} | {exceptions} |")
    return "\n".join(lines)


def _optional_json(flag, made_by, sources):
    """The JSON file that flag --`flag` names (None for ''), added to `sources`."""
    path = getattr(FLAGS, flag)
    if not path:
        return None
    if not os.path.exists(path):
        raise app.UsageError(f"--{flag}: no {path}; run {made_by} (or pass --{flag}='')")
    with open(path) as f:
        found = json.load(f)
    sources.append(path)
    return found


def main(argv):
    del argv
    table_path = os.path.join(FLAGS.grid_dir, "table.json")
    if not os.path.exists(table_path):
        raise app.UsageError(f"--grid_dir: no {table_path}; run experiments/reproduce.py first")
    with open(table_path) as f:
        table = json.load(f)
    sources = [f"{table_path} ({table.get('command', '?')})"]
    benchmark = _optional_json("benchmark", "experiments/benchmark.py --output=...json", sources)
    ablation = _optional_json("ablation", "experiments/ablation.py", sources)
    trade_off = recorded_trade_off(FLAGS.grid_dir, table["summaries"])
    found = claims(table["summaries"], benchmark, FLAGS.tolerance, width=(table.get("hidden") or [None])[0],
                   trade_off=trade_off, ablation=ablation)
    output = FLAGS.output or FLAGS.grid_dir
    os.makedirs(output, exist_ok=True)
    if trade_off:
        with open(os.path.join(output, "stability_plasticity.png"), "wb") as f:
            f.write(figure_to_png(plot_stability_plasticity(trade_off)))
    markdown = to_markdown(found, sources)
    with open(os.path.join(output, "claims.md"), "w") as f:
        f.write(markdown + "\n")
    with open(os.path.join(output, "claims_summary.md"), "w") as f:  # the README's view
        f.write(summary_markdown(found) + f"\n\nEvery row and measurement: [claims.md](claims.md).\n")
    with open(os.path.join(output, "claims.json"), "w") as f:
        json.dump({"sources": sources, "tolerance_points": FLAGS.tolerance,
                   "claims": {c: [{"where": w, "measured": m, "holds": h} for w, m, h in rows]
                              for c, rows in found.items()},
                   "trade_off": trade_off}, f, indent=2)
    print(markdown)


if __name__ == "__main__":
    cli.run(main)
