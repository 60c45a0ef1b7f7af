"""One look for every paper figure: the seaborn theme, run colours keyed by legend label, and saving.

L0approx runs get a sequential palette ordered by lambda (light = weak penalty, dark = strong); the L1
reference is always black and dashed, so it reads the same in every figure.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib as mpl
import matplotlib.pyplot as plt
import matplotlib.ticker as mticker
import seaborn as sns

from .io import atomic_path
from .results import Study

REFERENCE_COLOR = "black"


def use_style() -> None:
    """The seaborn theme and matplotlib defaults shared by all figures."""
    sns.set_theme(context="paper", style="whitegrid", font_scale=1.2)
    mpl.rcParams.update({"figure.figsize": (6.4, 4.4), "figure.dpi": 110, "savefig.dpi": 200,
                         "savefig.bbox": "tight", "legend.frameon": False, "axes.titleweight": "bold",
                         "pdf.fonttype": 42})


def palette(study: Study) -> dict[str, str]:
    """Legend label -> colour for every run of the profile (use with seaborn's `hue="label"`)."""
    others = sorted((r for r in study.runs if r != study.reference), key=lambda r: study.cfg.run(r).lambda_sparsity)
    colours = sns.color_palette("flare", len(others)).as_hex()
    out = {study.labels[r]: c for r, c in zip(others, colours)}
    out[study.labels[study.reference]] = REFERENCE_COLOR
    return out


def run_style(study: Study, run: str) -> dict:
    """matplotlib keyword arguments for one run's line: colour, label, dashes for the reference."""
    label = study.labels[run]
    ref = run == study.reference
    return {"color": palette(study)[label], "label": label, "linestyle": "--" if ref else "-",
            "zorder": 3 if ref else 2}


def plain_log_ticks(ax: plt.Axes, which: str = "xy") -> None:
    """Log axes labelled 0.05, 0.1, 0.2, ... instead of powers of ten (for ranges of a few decades)."""
    for name in which:
        axis = getattr(ax, f"{name}axis")
        axis.set_major_locator(mticker.LogLocator(subs=(1, 2, 5)))
        axis.set_major_formatter(mticker.FormatStrFormatter("%g"))
        axis.set_minor_formatter(mticker.NullFormatter())


def save_figure(fig: plt.Figure, folder: str | Path, name: str) -> list[Path]:
    """`<folder>/<name>.png` and `.pdf`, each written atomically; the PDF carries no creation date."""
    paths = []
    for ext, meta in (("png", {"Software": None}), ("pdf", {"CreationDate": None, "Producer": None})):
        path = Path(folder) / f"{name}.{ext}"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, metadata=meta)
        paths.append(path)
    return paths
