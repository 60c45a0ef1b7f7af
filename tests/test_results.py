"""saelib.results: the power-law fit, Table 1 on a fabricated results folder, the papermill-parameter check."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import save_file

from saelib import results
from saelib.metrics import DEAD_LOG10

FIG01 = results.ROOT / "paper_nbs" / "fig01_sparsity_measures.ipynb"


# ---- power-law fit ----

def _counts_on_bin_centres(slope, intercept, lo, hi, bin_width=0.2):
    """log10(s_f) values placed on bin centres so that count(x) = round(10 ** (intercept + slope * x))."""
    centres = np.arange(round(lo / bin_width), round(hi / bin_width) + 1) * bin_width
    return np.concatenate([np.full(round(10 ** (intercept + slope * x)), x) for x in centres])


@pytest.mark.parametrize("slope, intercept", [(-0.9, 1.5), (-0.5, 2.0), (0.3, 3.5)])  # >= 100 per bin
def test_power_law_fit_recovers_a_known_slope(slope, intercept):
    x = _counts_on_bin_centres(slope, intercept, -5.0, -1.0)
    x = np.concatenate([x, np.full(50, DEAD_LOG10), np.full(500, -0.2)])  # dead and dense: outside the range
    fit = results.power_law_fit(x, lo=-5.0, hi=-1.0)
    assert fit.slope == pytest.approx(slope, abs=0.01)
    assert fit.intercept == pytest.approx(intercept, abs=0.03)
    assert (fit.lo, fit.hi, fit.n_bins) == (-5.0, -1.0, 21)
    assert "slope" in str(fit) and "[-5.00, -1.00]" in str(fit)


def test_power_law_fit_on_sampled_sparsities():
    # density p(s) ~ s^(alpha) on [1e-5, 1e-1] gives counts per log bin ~ s^(alpha + 1)
    rng = np.random.default_rng(0)
    alpha, a, b = -1.9, 1e-5, 1e-1
    u = rng.random(200_000)
    s = (a ** (alpha + 1) + u * (b ** (alpha + 1) - a ** (alpha + 1))) ** (1 / (alpha + 1))
    fit = results.power_law_fit(np.log10(s), lo=-4.6, hi=-1.4)
    assert fit.slope == pytest.approx(alpha + 1, abs=0.03)


def test_power_law_fit_needs_two_bins():
    with pytest.raises(ValueError, match="widen the range"):
        results.power_law_fit(np.full(10, -3.0), lo=-3.0, hi=-1.0)


def test_default_fit_range():
    assert results.default_fit_range(1e-5, 1_048_576) == (-5.0, -1.0)  # paper: s_min is the limit
    lo, hi = results.default_fit_range(1e-5, 8192)  # smoke: 10 firings on 8192 tokens
    assert lo == pytest.approx(math.log10(10 / 8192)) and hi == -1.0


def test_log10_bins_put_dead_features_in_their_own_bin():
    edges = results.log10_bins(0.2)
    counts, _ = np.histogram([DEAD_LOG10, DEAD_LOG10, -9.8, 0.0], bins=edges)
    assert counts[0] == 2 and counts[1] == 1 and counts[-1] == 1


# ---- a fabricated results folder ----

@pytest.fixture
def fake_study(tmp_path):
    """results/<profile>/runs/<run>/{eval.json, metrics.csv, features.safetensors} for every smoke run."""
    study = results.open_study("smoke", results_dir=str(tmp_path))
    for i, run in enumerate(study.runs):
        folder = tmp_path / "runs" / run
        folder.mkdir(parents=True)
        cfg = study.cfg.run(run)
        ev = {"run": run, "label": cfg.label, "lambda_sparsity": cfg.lambda_sparsity, "tokens": 8192,
              "l0": 10.0 + i, "l1": 100.0 + i, "mse_legacy": 0.01 * (i + 1), "mse": 0.1 * (i + 1),
              "fvu": 0.05 * (i + 1), "dead": i, "dead_pct": 100 * i / 256, "dense_gt_0.1": 2 * i,
              "dense_gt_0.2": i, "ce_recovered": 0.9 - 0.01 * i, "ce_clean": 5.0}
        (folder / "eval.json").write_text(json.dumps(ev))
        pd.DataFrame({"step": [0, 5, 9], "l0": [50.0, 20.0, 10.0 + i], "mse_legacy": [1.0, 0.1, 0.01],
                      "l1": [9.0, 8.0, 7.0]}).to_csv(folder / "metrics.csv", index=False)
        s = np.array([0.0] * i + [1e-4, 0.01, 0.5] + [0.2] * (5 - i), dtype=np.float32)
        save_file({"sparsity": s, "max_act": np.ones_like(s)}, str(folder / "features.safetensors"))
    return study


def test_open_study_resolves_paths_from_the_repo_root(tmp_path):
    study = results.open_study("smoke")
    assert study.results == results.ROOT / "results" / "smoke"
    assert study.figures == results.ROOT / "figures" / "smoke"
    assert results.open_study("smoke", str(tmp_path), "figs").figures == results.ROOT / "figs"
    assert results.open_study("smoke", overrides="out_dir=elsewhere").results == results.ROOT / "elsewhere"


def test_missing_artifact_names_the_command(tmp_path):
    study = results.open_study("smoke", results_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="snakemake --cores 1 --config profile=smoke"):
        results.load_evals(study)


def test_summary_table_columns_and_values(fake_study):
    table = results.summary_table(fake_study)
    spread = [c for m in results.TABLE1_METRICS for c in (m, m + results.SPREAD)]
    assert list(table.columns) == ["label", "lambda_sparsity", "seeds", *spread, "reference"]
    assert list(table.index) == fake_study.main_runs
    assert table.reference.sum() == 1 and table.reference[fake_study.reference]
    first = table.iloc[0]  # l0a_1 (i = 0) and l0a_1_s1 (i = 1): mean and sample std of the two seeds
    assert first.seeds == 2
    assert (first.l0, first.mse_legacy, first.dead, first["dense_gt_0.1"]) == pytest.approx((10.5, 0.015, 0.5, 1.0))
    assert first.l0_std == pytest.approx(2 ** -0.5)
    assert first.label == fake_study.labels[fake_study.runs[0]]
    assert first.lambda_sparsity == fake_study.cfg.run(fake_study.runs[0]).lambda_sparsity


def test_summary_table_adds_the_released_reference(fake_study):
    folder = fake_study.results / "runs" / results.RELEASED_RUN
    folder.mkdir(parents=True)
    ev = json.loads((fake_study.results / "runs" / "ref_l1" / "eval.json").read_text()) | {"label": "released"}
    (folder / "eval.json").write_text(json.dumps(ev))
    table = results.summary_table(fake_study)
    assert table.index[-1] == results.RELEASED_RUN and table.label.iloc[-1] == "released"
    assert np.isnan(table.l0_std.iloc[-1])


def test_families_and_ablation_table(fake_study):
    fams = {fake_study.family(c) for c in fake_study.configurations}
    assert fams == set(results.FAMILIES)
    assert fake_study.family("ref_l1_s1") == results.REFERENCE_FAMILY
    table = results.ablation_table(fake_study)
    assert list(table.index) == sorted(fake_study.configurations, key=lambda c: (
        results.FAMILIES.index(fake_study.family(c)), fake_study.cfg.run(c).lambda_sparsity))
    assert (table.seeds == 2).all()
    verdict = results.ablation_verdict(table)
    assert len(verdict.splitlines()) == len(results.ABLATION_QUESTIONS) and "the L0 function" in verdict


def test_matching_pairs_use_the_other_seed():
    study = results.open_study("smoke")
    pairs = results.matching_pairs(study)
    assert pairs == {"new vs reference": ("l0a_3", "ref_l1"),
                     "reference vs reference, other seed": ("ref_l1", "ref_l1_s1"),
                     "new vs new, other seed": ("l0a_3", "l0a_3_s1")}
    assert list(results.matching_pairs(results.open_study("paper"))) == ["new vs reference"]


def test_matched_l0_interpolates_in_log_l0():
    t = pd.DataFrame({"family": ["a", "b", "b"], "label": ["x", "y", "z"], "l0": [20.0, 10.0, 40.0],
                      "dead": [1.0, 0.0, 8.0]})
    m = results.matched_l0(t, "a", "b", "dead")
    assert m["b"].iloc[0] == pytest.approx(4.0)  # log 20 is halfway between log 10 and log 40
    assert m["b_l0"].iloc[0] == "10-40"
    # with log_metric: geometric, 2 at the halfway point between 1 and 4
    t2 = t.assign(dead=[1.0, 1.0, 4.0])
    assert results.matched_l0(t2, "a", "b", "dead", log_metric=True)["b"].iloc[0] == pytest.approx(2.0)
    assert results.matched_l0(t.assign(l0=[100.0, 10.0, 40.0]), "a", "b", "dead").empty


def test_verdict_reads_the_matched_values():
    t = pd.DataFrame({"family": [results.MAIN_FAMILY, "L1 + P_freq", "L1 + P_freq"], "label": ["x", "y", "z"],
                      "l0": [20.0, 10.0, 40.0], "mse_legacy": [0.01, 0.04, 0.01], "dead": [0.0, 1.0, 1.0]})
    line = results.ablation_verdict(t).splitlines()[0]
    assert line.startswith("the L0 function: yes") and "L0 20: 0.01 vs 0.02 (B between L0 10-40)" in line
    worse = results.ablation_verdict(t.assign(mse_legacy=[0.03, 0.04, 0.01])).splitlines()[0]
    assert worse.startswith("the L0 function: no")
    assert "no matched L0" in results.ablation_verdict(t).splitlines()[1]


def test_write_table_csv_and_markdown(fake_study, tmp_path):
    table = results.summary_table(fake_study)
    csv, md = results.write_table(table, tmp_path / "figs", "table01_summary")
    back = pd.read_csv(csv, index_col=0)
    pd.testing.assert_frame_equal(back, table, check_dtype=False, check_index_type=False)
    lines = md.read_text().splitlines()
    assert lines[0].startswith("| run | λ | seeds | L0 | MSE (legacy) | MSE | FVU | dead | dead % |")
    assert len(lines) == 2 + len(fake_study.main_runs)
    assert " ± " in lines[2]  # mean ± seed spread
    assert lines[-1].endswith("| ✓ |")  # the reference is the last run of the smoke profile
    assert not list((tmp_path / "figs").glob(".*.tmp"))  # atomic writes leave no temporaries


def test_compare_tables_within_tolerance(fake_study):
    table = results.summary_table(fake_study)
    recorded = table.copy()
    assert results.compare_tables(table, recorded).startswith(f"{table.size} values agree")
    runs = fake_study.main_runs
    recorded.loc[runs[1], "l0"] *= 1.02  # inside 5 %
    recorded.loc[runs[1], "dead"] += 3  # inside 8 features
    recorded.loc[runs[1], "l0_std"] += 0.01 * recorded.loc[runs[1], "l0"]  # a spread: within 5 % of the mean
    assert "agree" in results.compare_tables(table, recorded)
    recorded.loc[runs[2], "fvu"] *= 1.2
    recorded.loc[runs[0], "label"] = "other"
    verdict = results.compare_tables(table, recorded)
    assert verdict.startswith("2 value(s) differ") and "fvu" in verdict and "label" in verdict
    assert "runs or columns differ" in results.compare_tables(table, recorded.iloc[:-1])


def test_loaders_tag_runs_and_draw_dead_features_at_minus_ten(fake_study):
    m = results.load_metrics(fake_study)
    assert len(m) == 3 * len(fake_study.runs)
    assert set(m.run) == set(fake_study.runs) and m.loc[m.reference, "run"].unique().tolist() == ["ref_l1"]
    sp = results.load_sparsities(fake_study)
    dead = sp[sp.s == 0]
    assert (dead.log10_s == DEAD_LOG10).all() and len(dead) == sum(range(len(fake_study.runs)))
    assert np.allclose(sp[sp.s > 0].log10_s, np.log10(sp[sp.s > 0].s))


# ---- papermill parameters ----

def test_notebook_parameters_are_read_from_the_parameters_cell():
    assert results.notebook_parameters(FIG01)[:4] == ["profile", "results_dir", "fig_dir", "overrides"]


def test_misspelt_papermill_parameter_is_an_error():
    good = {"profile": "smoke", "results_dir": "results/smoke", "fig_dir": "figures/smoke", "overrides": ""}
    assert results.papermill_args(FIG01, good) == \
        "-p profile smoke -p results_dir results/smoke -p fig_dir figures/smoke -p overrides ''"
    with pytest.raises(ValueError, match="'profle'.*its parameters are: profile, results_dir"):
        results.papermill_args(FIG01, {**good, "profle": "tiny"})


# ---- plots ----

def test_palette_names_runs_by_label_and_save_figure_writes_png_and_pdf(fake_study, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from saelib import plots

    pal = plots.palette(fake_study)
    assert set(pal) == set(fake_study.labels.values())
    assert pal[fake_study.labels[fake_study.reference]] == plots.REFERENCE_COLOR
    assert len(set(pal.values())) == len(pal)
    style = plots.run_style(fake_study, fake_study.reference)
    assert style["linestyle"] == "--" and style["label"] == fake_study.labels[fake_study.reference]
    plots.use_style()
    fig, ax = plt.subplots()
    ax.plot([1, 2], [1, 2])
    png, pdf = plots.save_figure(fig, tmp_path / "figs", "fig00_test")
    plt.close(fig)
    assert png.read_bytes()[:4] == b"\x89PNG" and pdf.read_bytes()[:4] == b"%PDF"
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["fig00_test.pdf", "fig00_test.png"]
