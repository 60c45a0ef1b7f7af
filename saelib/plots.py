"""One look for every paper figure, and the figure code the notebooks share: the seaborn theme, run colours
keyed by legend label, family colours, axes conventions, and saving with provenance.

L0approx runs get a sequential palette ordered by lambda (light = weak penalty, dark = strong); the L1 reference
is always black and dashed, so it reads the same in every figure. Ablation families get a sequential palette
of their own each; figures that compare families use one colour and marker per family (FAMILY_STYLE). Every
L0-against-error figure puts L0 on x and the error on y, both on log axes.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib as mpl
import matplotlib.pyplot as plt
import matplotlib.ticker as mticker
import numpy as np
import pandas as pd
import seaborn as sns

from .config import FAMILIES, MAIN_FAMILY, REFERENCE_FAMILY
from .io import atomic_path
from .metrics import DEAD_LOG10
from .provenance import as_json, one_line, provenance
from .study import Study

REFERENCE_COLOR = "black"
FAMILY_PALETTES = {MAIN_FAMILY: "flare", "L0approx only": "crest", "L1 + P_freq": "Greens", "plain L1": "Purples"}
FAMILY_STYLE = {  # family -> colour and marker, for figures that compare loss families
    MAIN_FAMILY: {"color": "#d1495b", "marker": "o"},
    "L0approx only": {"color": "#2e86ab", "marker": "s"},
    "L1 + P_freq": {"color": "#3a9d5d", "marker": "^"},
    "plain L1": {"color": "#7b4fa0", "marker": "v"},
    REFERENCE_FAMILY: {"color": REFERENCE_COLOR, "marker": "*"},
    "TopK": {"color": "#f4a261", "marker": "D"},
    "BatchTopK": {"color": "#8d6e63", "marker": "P"},
    "JumpReLU": {"color": "#1d3557", "marker": "X"},
}
PAIR_COLORS = ["#d1495b", REFERENCE_COLOR, "#2e86ab", "#3a9d5d"]  # Figure 11's comparisons, in order
NULL_COLOR = "0.55"
METRIC_LABELS = {"mse_legacy": "MSE, legacy definition", "mse": "MSE", "fvu": "FVU", "l0": "L0 (active features per token)",
                 "l1": "L1 (sum of activations per token)", "dead": "dead features", "mcc": "MCC with the true features",
                 "f1": "F1 of firing against the true features", "explained_variance": "explained variance"}


def use_style() -> None:
    """The seaborn theme and matplotlib defaults shared by all figures."""
    sns.set_theme(context="paper", style="whitegrid", font_scale=1.2)
    mpl.rcParams.update({"figure.figsize": (6.4, 4.4), "figure.dpi": 110, "savefig.dpi": 200,
                         "savefig.bbox": "tight", "legend.frameon": False, "axes.titleweight": "bold",
                         "pdf.fonttype": 42})


def family_style(family: str) -> dict:
    """Colour and marker of a loss family (grey circles for one not in FAMILY_STYLE)."""
    return FAMILY_STYLE.get(family, {"color": "0.5", "marker": "o"})


def palette(study: Study) -> dict[str, str]:
    """Legend label -> colour for every run of the profile (use with seaborn's `hue="label"`); the seeds of
    one configuration share its label and colour."""
    out = {}
    for fam in [*FAMILIES, *sorted({study.family(r) for r in study.configurations} - set(FAMILIES))]:
        runs = sorted((r for r in study.configurations if study.family(r) == fam and r != study.reference),
                      key=lambda r: study.cfg.run(r).lambda_sparsity)
        if not runs:
            continue
        name = FAMILY_PALETTES.get(fam)
        if name is None:  # a family without a palette: shades of its own colour
            colours = sns.light_palette(family_style(fam)["color"], len(runs) + 2)[2:]
        elif name in ("flare", "crest"):
            colours = sns.color_palette(name, len(runs))
        else:  # sequential matplotlib maps start near white: skip their lightest shades
            colours = sns.color_palette(name, len(runs) + 2)[2:]
        out.update({study.labels[r]: mpl.colors.to_hex(c) for r, c in zip(runs, colours)})
    out[study.labels[study.reference]] = REFERENCE_COLOR
    return out


def run_style(study: Study, run: str) -> dict:
    """matplotlib keyword arguments for one run's line: colour, label, dashes for the reference."""
    label = study.labels[run]
    ref = study.cfg.base_run(run) == study.reference
    return {"color": palette(study)[label], "label": label, "linestyle": "--" if ref else "-",
            "zorder": 3 if ref else 2}


def plain_log_ticks(ax: plt.Axes, which: str = "xy") -> None:
    """Log axes labelled 0.05, 0.1, 0.2, ... instead of powers of ten (for ranges of a few decades); an axis
    spanning less than about one decade gets denser labels (... 8, 10, 15, 20, 30 ...). Call after plotting."""
    for name in which:
        axis = getattr(ax, f"{name}axis")
        lo, hi = getattr(ax, f"get_{name}lim")()
        narrow = lo > 0 and math.log10(hi / lo) < 1.2
        subs = (1, 1.5, 2, 3, 4, 5, 6, 8) if narrow else (1, 2, 5)
        axis.set_major_locator(mticker.LogLocator(subs=subs))
        axis.set_major_formatter(mticker.FormatStrFormatter("%g"))
        axis.set_minor_formatter(mticker.NullFormatter())


def log10_sparsity_axis(ax: plt.Axes, s_min: float | None = None) -> None:
    """The log10(s_f) axis of Figures 5 and 6: dead features at -10 labelled as such, s_min marked."""
    ax.set_xticks([-10, -8, -6, -4, -2, 0], ["dead\n-10", "-8", "-6", "-4", "-2", "0"])
    ax.set_xlim(DEAD_LOG10 - 0.5, 0.3)
    if s_min is not None:
        ax.axvline(math.log10(s_min), color="0.6", lw=1.5, label=f"s_min = {s_min:g}")


def l0_vs_error_axes(ax: plt.Axes, metric: str = "mse_legacy", where: str = "held out") -> None:
    """Figures 4 and 10: L0 on x, the error on y, both logarithmic; lower left is better."""
    ax.set(xscale="log", yscale="log", xlabel=f"L0 (active features per token, {where})",
           ylabel=f"{METRIC_LABELS.get(metric, metric)} ({where})")
    plain_log_ticks(ax)


def metric_vs_step(study: Study, metrics: pd.DataFrame, metric: str, title: str, smooth: int = 1) -> plt.Figure:
    """Figures 7-9: one training-batch metric against the step, one line per run, log y axis (the values span
    decades, and the end-of-training differences are what the text compares), and the last value labelled at
    the right edge."""
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for run, d in metrics.groupby("run", sort=False):
        y = d[metric].rolling(smooth, min_periods=1).mean()
        style = run_style(study, run)
        ax.plot(d.step, y, lw=1.5, **style)
        ax.annotate(f"{y.iloc[-1]:.3g}", (d.step.iloc[-1], y.iloc[-1]), xytext=(4, 0), textcoords="offset points",
                    va="center", fontsize="x-small", color=style["color"])
    ax.set(yscale="log", xlabel=f"training step ({study.cfg.train.batch_tokens:,} tokens each)",
           ylabel=f"{METRIC_LABELS.get(metric, metric)} (training batch)", title=title)
    plain_log_ticks(ax, "y")
    ax.legend(loc="upper left", bbox_to_anchor=(1.08, 1), fontsize="small")
    return fig


def family_curves(ax: plt.Axes, evals: pd.DataFrame, table: pd.DataFrame, metric: str) -> list:
    """Each loss family's configurations against L0: single seeds as small markers, the mean over seeds as a large
    marker with ± one sample standard deviation on both axes, a line joining the family's configurations by L0.
    `evals`: one row per run (with `family`); `table`: one row per configuration (`tables.seed_table`). Returns the
    legend handles."""
    from matplotlib.lines import Line2D

    handles = []
    for fam, t in table.groupby("family", sort=False):
        style = family_style(fam)
        seeds = evals[evals.family == fam]
        ax.scatter(seeds.l0, seeds[metric], s=18, alpha=0.45, color=style["color"], marker=style["marker"], lw=0)
        t = t.sort_values("l0")
        err = t[metric + "_std"].fillna(0) if metric + "_std" in t else None
        ax.errorbar(t.l0, t[metric], xerr=t.l0_std.fillna(0), yerr=err, color=style["color"], marker=style["marker"],
                    ms=13 if fam == REFERENCE_FAMILY else 8, lw=1.2, capsize=3, mec="white", zorder=4)
        handles.append(Line2D([], [], color=style["color"], marker=style["marker"], ms=8, label=fam))
    handles.append(Line2D([], [], color="0.4", marker="o", ms=4, alpha=0.5, lw=0, label="single seed"))
    return handles


def save_figure(fig: plt.Figure, folder: str | Path, name: str, study: Study | None = None) -> list[Path]:
    """`<folder>/<name>.png` and `.pdf`, each written atomically, with the provenance of what made them in their
    metadata (PNG text chunk `Provenance`, PDF `Subject` and `Keywords`); the PDF carries no creation date."""
    rec = provenance(study.cfg if study else None)
    paths = []
    for ext, meta in (("png", {"Software": None, "Description": one_line(rec), "Provenance": as_json(rec)}),
                      ("pdf", {"CreationDate": None, "Producer": None, "Subject": one_line(rec),
                               "Keywords": as_json(rec)})):
        path = Path(folder) / f"{name}.{ext}"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, metadata=meta)
        paths.append(path)
    print(f"saved {', '.join(str(p) for p in paths)}")
    return paths


def ecdf_above(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x, fraction of values >= x) for a step plot of 'fraction above a threshold'."""
    x = np.sort(np.asarray(values))
    return x, 1 - np.arange(len(x)) / len(x)
