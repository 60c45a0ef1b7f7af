"""One look for every paper figure: the seaborn theme, run colours keyed by legend label, and saving.

L0approx runs get a sequential palette ordered by lambda (light = weak penalty, dark = strong); the L1
reference is always black and dashed, so it reads the same in every figure. Ablation families (L0approx
alone, L1 + P_freq, plain L1) get a sequential palette of their own each; figures that compare families
use one colour and marker per family (FAMILY_STYLE).
"""

from __future__ import annotations

import math

from pathlib import Path

import matplotlib as mpl
import matplotlib.pyplot as plt
import matplotlib.ticker as mticker
import seaborn as sns

from .io import atomic_path
from .results import FAMILIES, MAIN_FAMILY, REFERENCE_FAMILY, Study

REFERENCE_COLOR = "black"
FAMILY_PALETTES = {MAIN_FAMILY: "flare", "L0approx only": "crest", "L1 + P_freq": "Greens", "plain L1": "Purples"}
FAMILY_STYLE = {  # family -> colour and marker, for figures that compare loss families
    MAIN_FAMILY: {"color": "#d1495b", "marker": "o"},
    "L0approx only": {"color": "#2e86ab", "marker": "s"},
    "L1 + P_freq": {"color": "#3a9d5d", "marker": "^"},
    "plain L1": {"color": "#7b4fa0", "marker": "v"},
    REFERENCE_FAMILY: {"color": REFERENCE_COLOR, "marker": "*"},
}


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
        name = FAMILY_PALETTES.get(fam, "Greys")
        # sequential matplotlib maps start near white: skip their lightest shades
        colours = sns.color_palette(name, len(runs)) if name in ("flare", "crest") else \
            sns.color_palette(name, len(runs) + 2)[2:]
        out.update({study.labels[r]: c for r, c in zip(runs, colours.as_hex() if hasattr(colours, "as_hex") else
                                                       [mpl.colors.to_hex(c) for c in colours])})
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


def save_figure(fig: plt.Figure, folder: str | Path, name: str) -> list[Path]:
    """`<folder>/<name>.png` and `.pdf`, each written atomically; the PDF carries no creation date."""
    paths = []
    for ext, meta in (("png", {"Software": None}), ("pdf", {"CreationDate": None, "Producer": None})):
        path = Path(folder) / f"{name}.{ext}"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, metadata=meta)
        paths.append(path)
    return paths
