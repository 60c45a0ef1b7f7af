"""Reading a profile's results for the paper notebooks: run metrics, evaluations and feature sparsities as
pandas frames, the power-law fit of Figure 6, Table 1 and its writers, and the check of papermill
parameters against a notebook's `parameters` cell.

Paths: `results_dir` and `fig_dir` may be empty (the profile's `out_dir` and `figures/<profile>`);
relative paths are taken from the repository root, so a notebook finds the same files whether nbval runs
it from `paper_nbs/` or papermill runs it from the root.
"""

from __future__ import annotations

import ast
import json
import math
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from pandas.api.types import is_bool_dtype, is_numeric_dtype
from safetensors.numpy import load_file

from .config import CONFIG_DIR, ProfileConfig, load_profile
from .io import atomic_write_text
from .metrics import DEAD_LOG10

ROOT = CONFIG_DIR.parent  # the repository root (config/ lives there)


# ---- where things are -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Study:
    """A profile's config, the folder its run artifacts are read from and the folder figures go to."""

    cfg: ProfileConfig
    results: Path
    figures: Path

    @property
    def runs(self) -> list[str]:
        return self.cfg.run_names

    @property
    def labels(self) -> dict[str, str]:
        """Run name -> legend label (e.g. `λ0 = 2e-3`)."""
        return {r: self.cfg.run(r).label for r in self.runs}

    @property
    def reference(self) -> str:
        return self.cfg.reference_run

    @property
    def highlight(self) -> str:
        return self.cfg.highlight_run or self.runs[0]

    def run_file(self, run: str, name: str) -> Path:
        path = self.results / "runs" / run / name
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: build it with "
                                    f"`snakemake --cores 1 --config profile={self.cfg.name}`")
        return path


def resolve(path: str | Path) -> Path:
    """An absolute path as is; a relative one from the repository root."""
    path = Path(path)
    return path if path.is_absolute() else ROOT / path


def open_study(profile: str, results_dir: str = "", fig_dir: str = "", overrides: str = "") -> Study:
    """The notebooks' entry point. `overrides`: comma-separated `key=value` (Snakemake's `set`)."""
    cfg = load_profile(profile, [s for s in overrides.split(",") if s])
    return Study(cfg, resolve(results_dir or cfg.out_dir), resolve(fig_dir or Path("figures") / cfg.name))


# ---- loading ----------------------------------------------------------------------------------------

def _tag(df: pd.DataFrame, study: Study, run: str) -> pd.DataFrame:
    return df.assign(run=run, label=study.labels[run], reference=run == study.reference)


def load_metrics(study: Study, runs: list[str] | None = None) -> pd.DataFrame:
    """Training logs (one row per logged step) of `runs` (default all), with run, label, reference."""
    return pd.concat([_tag(pd.read_csv(study.run_file(r, "metrics.csv")), study, r) for r in runs or study.runs],
                     ignore_index=True)


def load_evals(study: Study, runs: list[str] | None = None) -> pd.DataFrame:
    """Held-out evaluation (`eval.json`), one row per run, indexed by run name in config order."""
    rows = [json.loads(study.run_file(r, "eval.json").read_text()) | {"run": r, "label": study.labels[r],
                                                                      "reference": r == study.reference}
            for r in runs or study.runs]
    return pd.DataFrame(rows).set_index("run")


def load_sparsities(study: Study, runs: list[str] | None = None) -> pd.DataFrame:
    """Per-feature sparsity s_f and log10(s_f) (dead features at DEAD_LOG10 = -10), one row per feature."""
    frames = []
    for r in runs or study.runs:
        s = load_file(str(study.run_file(r, "features.safetensors")))["sparsity"].astype(np.float64)
        log10_s = np.where(s > 0, np.log10(np.where(s > 0, s, 1.0)), DEAD_LOG10)
        frames.append(_tag(pd.DataFrame({"feature": np.arange(len(s)), "s": s, "log10_s": log10_s}), study, r))
    return pd.concat(frames, ignore_index=True)


# ---- Figure 6: histogram of log10(s_f) and its power-law fit ------------------------------------------

def log10_bins(bin_width: float = 0.2, lo: float = DEAD_LOG10, hi: float = 0.0) -> np.ndarray:
    """Bin edges on the log10(s_f) axis, aligned to multiples of bin_width; the dead value -10 gets a bin."""
    n = round((hi - lo) / bin_width)
    return lo - bin_width / 2 + bin_width * np.arange(n + 2)


class PowerLawFit(NamedTuple):
    slope: float
    """d log10(count per bin) / d log10(s_f)."""
    intercept: float
    """log10(count per bin) at log10(s_f) = 0."""
    lo: float
    """Fitted range of log10(s_f): bins whose centres lie in [lo, hi]."""
    hi: float
    n_bins: int
    """Non-empty bins in the range (the points of the least-squares fit)."""

    def __str__(self) -> str:
        return (f"slope {self.slope:.2f}, intercept {self.intercept:.2f}, fitted over log10(s_f) in "
                f"[{self.lo:.2f}, {self.hi:.2f}] ({self.n_bins} non-empty bins)")


def power_law_fit(log10_s: np.ndarray, lo: float, hi: float, bin_width: float = 0.2) -> PowerLawFit:
    """Least-squares line through (bin centre, log10 count) of the log10(s_f) histogram over [lo, hi]."""
    counts, edges = np.histogram(np.asarray(log10_s), bins=log10_bins(bin_width))
    centres = (edges[:-1] + edges[1:]) / 2
    keep = (centres >= lo - 1e-9) & (centres <= hi + 1e-9) & (counts > 0)
    if keep.sum() < 2:
        raise ValueError(f"fewer than 2 non-empty bins in log10(s_f) range [{lo}, {hi}]: widen the range")
    slope, intercept = np.polyfit(centres[keep], np.log10(counts[keep]), 1)
    return PowerLawFit(float(slope), float(intercept), lo, hi, int(keep.sum()))


def default_fit_range(s_min: float, eval_tokens: int, min_fires: int = 10, hi: float = -1.0) -> tuple[float, float]:
    """From the larger of s_min and `min_fires` firings on the evaluation set (below that s_f is too
    coarsely quantised to bin) up to `hi` (the high-density features above 0.1 are left out)."""
    return max(math.log10(s_min), math.log10(min_fires / eval_tokens)), hi


# ---- Table 1 ------------------------------------------------------------------------------------------

TABLE_COLUMNS = {  # eval.json key -> Table 1 column (Markdown header)
    "label": "run", "lambda_sparsity": "λ", "l0": "L0", "mse_legacy": "MSE (legacy)", "mse": "MSE",
    "fvu": "FVU", "dead": "dead", "dead_pct": "dead %", "dense_gt_0.1": "s_f > 0.1",
    "dense_gt_0.2": "s_f > 0.2", "l1": "L1", "ce_recovered": "CE loss recovered", "reference": "reference",
}


def summary_table(study: Study) -> pd.DataFrame:
    """Table 1: one row per run (index: run name), the columns of TABLE_COLUMNS (keys as column names)."""
    return load_evals(study)[list(TABLE_COLUMNS)]


# A table recomputed on another machine (other BLAS, other thread count) differs slightly from the
# recorded one: smoke runs moved by about 1% in L0 and MSE and by up to 4 features in counts between
# 1 and 2 CPU threads. Counts get an absolute tolerance, other numbers a relative one.
ABS_TOLERANCE = {"dead": 8, "dead_pct": 3.0, "dense_gt_0.1": 8, "dense_gt_0.2": 8}


def compare_tables(table: pd.DataFrame, expected: pd.DataFrame, rtol: float = 0.05) -> str:
    """A short verdict on `table` against a recorded one (same runs and columns; numbers within
    rtol, or within ABS_TOLERANCE for counts; text and flags equal). Lists every cell that differs."""
    if list(table.index) != list(expected.index) or list(table.columns) != list(expected.columns):
        return (f"runs or columns differ: {list(table.index)} x {list(table.columns)} recorded as "
                f"{list(expected.index)} x {list(expected.columns)}")
    bad = []
    for col in table.columns:
        for run in table.index:
            a, b = table.at[run, col], expected.at[run, col]
            if isinstance(b, (bool, np.bool_, str)) or isinstance(a, (bool, np.bool_, str)):
                ok = str(a) == str(b)
            elif col in ABS_TOLERANCE:
                ok = abs(a - b) <= ABS_TOLERANCE[col]
            else:
                ok = math.isclose(a, b, rel_tol=rtol)
            if not ok:
                bad.append(f"  {run} {col}: {a!r}, recorded {b!r}")
    tol = f"numbers within {rtol:.0%}, " + ", ".join(f"{k} ±{v:g}" for k, v in ABS_TOLERANCE.items())
    if bad:
        return f"{len(bad)} value(s) differ from the recorded table ({tol}):\n" + "\n".join(bad)
    return f"{table.size} values agree with the recorded table ({tol})"


def to_markdown(df: pd.DataFrame, headers: dict[str, str] | None = None) -> str:
    """A GitHub pipe table; floats with 4 significant digits, booleans as a check mark."""
    def cell(x):
        if isinstance(x, (bool, np.bool_)):
            return "✓" if x else ""
        if isinstance(x, (float, np.floating)):
            return f"{x:.4g}"
        return str(x)
    headers = headers or {}
    cols = [headers.get(c, c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |",
             "|" + "|".join("---:" if is_numeric_dtype(df[c]) and not is_bool_dtype(df[c]) else "---"
                            for c in df.columns) + "|"]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def write_table(df: pd.DataFrame, folder: str | Path, name: str) -> list[Path]:
    """`<name>.csv` (index and full precision) and `<name>.md` (Table 1 headers), both written atomically."""
    folder = Path(folder)
    csv, md = folder / f"{name}.csv", folder / f"{name}.md"
    atomic_write_text(csv, df.to_csv())
    atomic_write_text(md, to_markdown(df, TABLE_COLUMNS))
    return [csv, md]


# ---- papermill parameters -----------------------------------------------------------------------------

def notebook_parameters(nb_path: str | Path) -> list[str]:
    """Names assigned in the notebook's cell tagged `parameters` (what papermill can override)."""
    nb = json.loads(Path(nb_path).read_text())
    cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{nb_path}: expected one cell tagged `parameters`, found {len(cells)}")
    src = "".join(cells[0]["source"]) if isinstance(cells[0]["source"], list) else cells[0]["source"]
    names = []
    for node in ast.parse(src).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
            if isinstance(node, ast.AnnAssign) else []
        names += [t.id for t in targets if isinstance(t, ast.Name)]
    return names


def check_parameters(nb_path: str | Path, params: dict) -> None:
    """Raise ValueError naming any parameter the notebook does not declare (papermill only warns)."""
    known = notebook_parameters(nb_path)
    unknown = [k for k in params if k not in known]
    if unknown:
        raise ValueError(f"{nb_path} has no parameter(s) {', '.join(map(repr, unknown))}; "
                         f"its parameters are: {', '.join(known)}")


def papermill_args(nb_path: str | Path, params: dict) -> str:
    """`-p name value ...` for papermill's command line, after checking every name against the notebook."""
    check_parameters(nb_path, params)
    return " ".join(f"-p {k} {shlex.quote(str(v))}" for k, v in params.items())
