"""Reading a profile's results for the paper notebooks: run metrics, evaluations and feature sparsities as
pandas frames, loss families and seeds, the power-law fit of Figure 6, Tables 1 and 2 (mean ± spread over
seeds) and their writers, the ablation verdict at matched L0, feature matching between runs (Figure 11),
and the check of papermill parameters against a notebook's `parameters` cell.

Paths: `results_dir` and `fig_dir` may be empty (the profile's `out_dir` and `figures/<profile>`);
relative paths are taken from the repository root, so a notebook finds the same files whether nbval runs
it from `paper_nbs/` or papermill runs it from the root.
"""

from __future__ import annotations

import ast
import dataclasses
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

    @property
    def configurations(self) -> list[str]:
        """Every configuration (run name of its first seed), in config order."""
        return list(dict.fromkeys(self.cfg.base_run(r) for r in self.runs))

    @property
    def main_runs(self) -> list[str]:
        """The post's runs, first seed only: the L0approx + P_freq grid and the reference (Figures 4-9)."""
        return [r for r in self.configurations if r == self.reference or family(self.cfg.run(r)) == MAIN_FAMILY]

    def family(self, run: str) -> str:
        """The loss family of a run (`family` below); the reference run is always REFERENCE_FAMILY."""
        return REFERENCE_FAMILY if self.cfg.base_run(run) == self.reference else family(self.cfg.run(run))

    def other_seed(self, run: str) -> str | None:
        """The same configuration's run with the next seed (None with one seed)."""
        reps = self.cfg.replicates(self.cfg.base_run(run))
        return reps[(reps.index(run) + 1) % len(reps)] if len(reps) > 1 else None

    def with_seeds(self, runs: list[str]) -> list[str]:
        """Every seed's run of the configurations of `runs`."""
        return [r for c in dict.fromkeys(self.cfg.base_run(r) for r in runs) for r in self.cfg.replicates(c)]

    @property
    def located_cfg(self) -> ProfileConfig:
        """The profile's config with `out_dir` set to the absolute results folder, for library code that finds
        artifacts through `cfg.out` (the LM, the held-out tokens) from any working directory."""
        return dataclasses.replace(self.cfg, out_dir=str(self.results))

    def run_file(self, run: str, name: str) -> Path:
        path = self.results / "runs" / run / name
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: build it with "
                                    f"`snakemake --cores 1 --config profile={self.cfg.name}`")
        return path


MAIN_FAMILY = "L0approx + P_freq"
REFERENCE_FAMILY = "L1 reference recipe"
FAMILIES = (MAIN_FAMILY, "L0approx only", "L1 + P_freq", "plain L1", REFERENCE_FAMILY)
"""Loss families of the ablations (SPEC "Beyond the post"), in the order figures and tables list them."""


def family(run_cfg) -> str:
    """A run's loss family from its config: sparsity term, frequency penalty on or off, and for L1 whether
    it is the reference recipe (pre-encoder bias or ghost grads) rather than the new SAEs' architecture."""
    freq = run_cfg.lambda_min > 0
    if run_cfg.sparsity == "l1":
        if run_cfg.ghost or run_cfg.pre_encoder_bias:
            return REFERENCE_FAMILY if not freq else "L1 recipe + P_freq"
        return "L1 + P_freq" if freq else "plain L1"
    name = "L0approx" if run_cfg.sparsity == "l0approx" else run_cfg.sparsity
    return f"{name} + P_freq" if freq else f"{name} only"


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
    return df.assign(run=run, label=study.labels[run], reference=run == study.reference,
                     config=study.cfg.base_run(run), family=study.family(run), seed=study.cfg.run(run).seed)


def load_metrics(study: Study, runs: list[str] | None = None) -> pd.DataFrame:
    """Training logs (one row per logged step) of `runs` (default all), with run, label, reference."""
    return pd.concat([_tag(pd.read_csv(study.run_file(r, "metrics.csv")), study, r) for r in runs or study.runs],
                     ignore_index=True)


def load_evals(study: Study, runs: list[str] | None = None) -> pd.DataFrame:
    """Held-out evaluation (`eval.json`), one row per run, indexed by run name in config order."""
    rows = [json.loads(study.run_file(r, "eval.json").read_text()) | {
        "run": r, "label": study.labels[r], "reference": r == study.reference, "config": study.cfg.base_run(r),
        "family": study.family(r), "seed": study.cfg.run(r).seed} for r in runs or study.runs]
    return pd.DataFrame(rows).set_index("run")


def load_sparsities(study: Study, runs: list[str] | None = None) -> pd.DataFrame:
    """Per-feature sparsity s_f and log10(s_f) (dead features at DEAD_LOG10 = -10), one row per feature."""
    frames = []
    for r in runs or study.runs:
        s = load_file(str(study.run_file(r, "features.safetensors")))["sparsity"].astype(np.float64)
        log10_s = np.where(s > 0, np.log10(np.where(s > 0, s, 1.0)), DEAD_LOG10)
        frames.append(_tag(pd.DataFrame({"feature": np.arange(len(s)), "s": s, "log10_s": log10_s}), study, r))
    return pd.concat(frames, ignore_index=True)


def dense_counts(study: Study, threshold: float = 0.1, runs: list[str] | None = None) -> pd.DataFrame:
    """Features with s_f > threshold, one row per run (every seed): run, config, family, label, seed, dense."""
    sp = load_sparsities(study, runs)
    return (sp.assign(dense=sp.s > threshold)
            .groupby(["run", "config", "family", "label", "seed"], sort=False, as_index=False).dense.sum())


# ---- Figure 11: feature matching between SAEs ---------------------------------------------------------

def matching_pairs(study: Study) -> dict[str, tuple[str, str]]:
    """The comparisons of SPEC "Beyond the post", name -> (run A, run B): the highlighted run against the
    reference, and each of them against its own configuration with another seed (when there is one)."""
    new, ref = study.highlight, study.reference
    pairs = {"new vs reference": (new, ref)}
    if study.other_seed(ref):
        pairs["reference vs reference, other seed"] = (ref, study.other_seed(ref))
    if study.other_seed(new):
        pairs["new vs new, other seed"] = (new, study.other_seed(new))
    return pairs


def feature_matching(study: Study, pairs: dict[str, tuple[str, str]], alive_only: bool = True
                     ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """For each pair (A, B): every decoder row of A and its best cosine similarity among B's decoder rows.
    Returns (one row per A feature: pair, a, b, feature, best_cos; one row per pair: match_summary's fractions
    above 0.9/0.8/0.7, mean and median). `alive_only` leaves out A's features dead on held-out tokens (their
    decoder rows never moved from the initialisation)."""
    import torch

    from .matching import match_saes, match_summary
    from .sae import SAE

    rows, summary = [], {}
    for name, (a, b) in pairs.items():
        best = match_saes(SAE.load(study.run_file(a, "sae.safetensors").parent),
                          SAE.load(study.run_file(b, "sae.safetensors").parent)).best_cos_A
        keep = np.ones(best.numel(), dtype=bool)
        if alive_only:
            keep = load_file(str(study.run_file(a, "features.safetensors")))["sparsity"] > 0
        best = best[torch.from_numpy(np.asarray(keep, dtype=bool))]
        rows.append(pd.DataFrame({"pair": name, "a": study.labels[a], "b": study.labels[b], "a_run": a, "b_run": b,
                                  "feature": np.flatnonzero(keep), "best_cos": best.numpy()}))
        summary[name] = {"a_run": a, "b_run": b} | match_summary(best)
    return pd.concat(rows, ignore_index=True), pd.DataFrame.from_dict(summary, orient="index").rename_axis("pair")


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
    "label": "run", "family": "loss family", "lambda_sparsity": "λ", "seeds": "seeds", "l0": "L0",
    "mse_legacy": "MSE (legacy)", "mse": "MSE", "fvu": "FVU", "dead": "dead", "dead_pct": "dead %",
    "dense_gt_0.1": "s_f > 0.1", "dense_gt_0.2": "s_f > 0.2", "l1": "L1", "ce_recovered": "CE loss recovered", "reference": "reference",
}


SPREAD = "_std"
"""Suffix of the seed-spread column of a metric: the sample standard deviation over seeds (NaN for one seed)."""
RELEASED_RUN = "released_ref"
"""Run folder holding `eval.json` of the released reference SAE (paper profile), shown in Table 1 if present."""


def seed_table(study: Study, configs: list[str], metrics: list[str]) -> pd.DataFrame:
    """One row per configuration (index: its first seed's run name): label, family, λ, number of seeds, and
    for each metric its mean over seeds and the spread (`<metric>_std`), then the reference flag."""
    evals = load_evals(study, study.with_seeds(configs))
    rows = {}
    for c in configs:
        e = evals[evals.config == c]
        row = {"label": study.labels[c], "family": study.family(c), "lambda_sparsity": study.cfg.run(c).lambda_sparsity,
               "seeds": len(e)}
        for m in metrics:
            row[m] = float(e[m].mean())
            row[m + SPREAD] = float(e[m].std(ddof=1)) if len(e) > 1 else float("nan")
        rows[c] = row | {"reference": c == study.reference}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("run")


TABLE1_METRICS = ["l0", "mse_legacy", "mse", "fvu", "dead", "dead_pct", "dense_gt_0.1", "dense_gt_0.2", "l1",
                  "ce_recovered"]


def summary_table(study: Study) -> pd.DataFrame:
    """Table 1: one row per configuration of the post's runs (index: run name of its first seed), each metric
    of TABLE_COLUMNS as the mean over seeds with its spread, and the released reference's row when its
    `eval.json` exists (`<results>/runs/released_ref/`)."""
    table = seed_table(study, study.main_runs, TABLE1_METRICS).drop(columns="family")
    released = study.results / "runs" / RELEASED_RUN / "eval.json"
    if released.exists():
        ev = json.loads(released.read_text())
        row = {"label": ev.get("label", "released reference"), "lambda_sparsity": ev.get("lambda_sparsity", np.nan),
               "seeds": 1} | {k: ev[k] for k in TABLE1_METRICS} | {m + SPREAD: np.nan for m in TABLE1_METRICS}
        table.loc[RELEASED_RUN] = pd.Series(row | {"reference": True})
    return table


ABLATION_METRICS = ["l0", "mse_legacy", "mse", "fvu", "dead", "ce_recovered"]


def ablation_table(study: Study) -> pd.DataFrame:
    """Table 2: every configuration, grouped by loss family (FAMILIES order) and sorted by λ, with L0, legacy
    MSE, plain MSE, FVU, dead features and CE loss recovered as mean and spread over seeds."""
    table = seed_table(study, study.configurations, ABLATION_METRICS)
    order = {f: i for i, f in enumerate(FAMILIES)}
    key = table.family.map(lambda f: order.get(f, len(order))) * 1e3 + table.lambda_sparsity
    return table.loc[key.sort_values(kind="stable").index]


def matched_l0(table: pd.DataFrame, family_a: str, family_b: str, metric: str, log_metric: bool = False
               ) -> pd.DataFrame:
    """Family A's configurations whose mean L0 lies inside family B's L0 range, with A's metric and B's
    interpolated at the same L0 (linear in log L0 between B's neighbouring configurations; with `log_metric`,
    linear in log metric too, which suits error curves falling steeply with L0). Empty when they don't
    overlap. Column `b_l0` gives the L0 of B's two configurations each value is interpolated between."""
    a = table[table.family == family_a].sort_values("l0")
    b = table[table.family == family_b].sort_values("l0")
    if len(b) < 2 or a.empty:
        return pd.DataFrame(columns=["label", "l0", family_a, family_b, "b_l0"])
    inside = a[(a.l0 >= b.l0.min()) & (a.l0 <= b.l0.max())]
    bl0, bm = np.log(b.l0.to_numpy()), b[metric].to_numpy(dtype=float)
    x = np.log(inside.l0.to_numpy())
    other = np.exp(np.interp(x, bl0, np.log(bm))) if log_metric else np.interp(x, bl0, bm)
    hi = np.clip(np.searchsorted(bl0, x), 1, len(bl0) - 1)
    span = [f"{b.l0.iloc[i - 1]:.3g}-{b.l0.iloc[i]:.3g}" for i in hi]
    return pd.DataFrame({"label": inside.label, "l0": inside.l0, family_a: inside[metric], family_b: other,
                         "b_l0": span})


ABLATION_QUESTIONS = [
    # (question, family A, family B, metric, what "better" means); A is asked whether it beats B
    ("the L0 function", MAIN_FAMILY, "L1 + P_freq", "mse_legacy", "lower legacy MSE"),
    ("the frequency penalty with L1", "L1 + P_freq", "plain L1", "dead", "fewer dead features"),
    ("the frequency penalty with L0approx", MAIN_FAMILY, "L0approx only", "dead", "fewer dead features"),
    ("the reference's recipe (pre-encoder bias, geometric-median b_dec, ghost grads) over the new SAEs' "
     "architecture", REFERENCE_FAMILY, "plain L1", "mse_legacy", "lower legacy MSE"),
]


def ablation_verdict(table: pd.DataFrame) -> str:
    """The ablation questions answered at matched L0, one line each (ABLATION_QUESTIONS): is it the L0
    function (L0approx vs L1, both with the frequency penalty: legacy MSE), does the frequency penalty cut
    dead features (L1 + P_freq vs plain L1, L0approx + P_freq vs L0approx only), and does the reference's
    recipe beat plain L1 on the new SAEs' architecture? MSE is interpolated in log-log (error curves are
    convex in L0, so a linear interpolation would favour A), dead counts linearly in log L0."""
    lines = []
    for what, a, b, metric, better in ABLATION_QUESTIONS:
        m = matched_l0(table, a, b, metric, log_metric=metric != "dead")
        if m.empty:
            ra = table[table.family == a].l0
            rb = table[table.family == b].l0
            lines.append(f"{what}: no matched L0 ({a}: L0 {ra.min():.3g}-{ra.max():.3g}, "
                         f"{b}: L0 {rb.min():.3g}-{rb.max():.3g}); no verdict")
            continue
        wins = int((m[a] < m[b]).sum())
        verdict = "yes" if wins == len(m) else "no" if wins == 0 else "mixed"
        pairs = ", ".join(f"L0 {l0:.3g}: {va:.4g} vs {vb:.4g} (B between L0 {sp})"
                          for l0, va, vb, sp in zip(m.l0, m[a], m[b], m.b_l0))
        lines.append(f"{what}: {verdict} - {a} has {better} than {b} at {wins} of {len(m)} matched L0; "
                     f"{metric}: {pairs}")
    return "\n".join(lines)


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
            elif col.endswith(SPREAD):  # a spread over seeds: within rtol of the metric's mean (or a count)
                base = col[:-len(SPREAD)]
                ok = (math.isnan(a) and math.isnan(b)) or abs(a - b) <= max(
                    rtol * abs(expected.at[run, base]) if base in expected.columns else 0.0, ABS_TOLERANCE.get(base, 0))
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
    """A GitHub pipe table; floats with 4 significant digits, booleans as a check mark. A column `<m>_std`
    (seed spread) is folded into column `<m>` as `mean ± spread`."""
    def cell(x, spread=None):
        if isinstance(x, (bool, np.bool_)):
            return "✓" if x else ""
        if isinstance(x, (float, np.floating)):
            if spread is not None and not np.isnan(spread):
                return f"{x:.4g} ± {spread:.2g}"
            return f"{x:.4g}"
        return str(x)
    headers = headers or {}
    cols = [c for c in df.columns if not (c.endswith(SPREAD) and c[:-len(SPREAD)] in df.columns)]
    lines = ["| " + " | ".join(headers.get(c, c) for c in cols) + " |",
             "|" + "|".join("---:" if is_numeric_dtype(df[c]) and not is_bool_dtype(df[c]) else "---"
                            for c in cols) + "|"]
    for _, row in df.iterrows():
        lines.append("| " + " | ".join(cell(row[c], row.get(c + SPREAD)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def write_table(df: pd.DataFrame, folder: str | Path, name: str) -> list[Path]:
    """`<name>.csv` (index and full precision) and `<name>.md` (Table 1 headers, mean ± seed spread), both
    written atomically."""
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
