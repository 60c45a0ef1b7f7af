"""saelib.study, saelib.tables, saelib.plots on a fabricated results folder: every artifact as the pipeline writes
it (hashes, checksums), then stale, mixed, truncated and broken ones, which must be refused by name."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from saelib import plots, tables
from saelib import study as S
from saelib.config import FAMILIES, MAIN_FAMILY, REFERENCE_FAMILY, ROOT
from saelib.io import ArtifactError, atomic_write_json, file_digest, save_safetensors
from saelib.metrics import DEAD_LOG10


def fabricate(study, values=None):
    """Every smoke run's cfg.json, metrics.csv, eval.json and features.safetensors, written by the real writers."""
    cfg = study.cfg
    for i, run in enumerate(study.runs):
        folder = cfg.run_dir(run)
        folder.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"step": [0, 5, 9], "l0": [50.0, 20.0, 10.0 + i], "mse_legacy": [1.0, 0.1, 0.01],
                      "l1": [9.0, 8.0, 7.0]}).to_csv(folder / "metrics.csv", index=False)
        atomic_write_json(folder / "cfg.json", {
            "shape": {"d_in": 64, "d_sae": 256, "pre_encoder_bias": False}, "train_hash": cfg.stage_hash("train", run),
            "settings": cfg.stage_config("train", run), "files": {"metrics.csv": file_digest(folder / "metrics.csv")},
            "metrics_rows": 3})
        v = (values or {}).get(run, {})
        ev = {"run": run, "tokens": 8192, "l0": 10.0 + i, "l1": 100.0 + i, "mse_legacy": 0.01 * (i + 1),
              "mse": 0.1 * (i + 1), "fvu": 0.05 * (i + 1), "dead": i, "dead_pct": 100 * i / 256,
              "dense_gt_0.1": 2 * i, "dense_gt_0.2": i, "ce_recovered": 0.9 - 0.01 * i, "ce_clean": 5.0} | v
        atomic_write_json(cfg.eval_dir(run) / "eval.json", ev | {
            "eval_hash": cfg.stage_hash("eval", run), "settings": cfg.stage_config("eval", run)})
        s = np.array([0.0] * i + [1e-4, 0.01, 0.5] + [0.2] * (5 - i), dtype=np.float32)
        save_safetensors({"sparsity": torch.from_numpy(s), "max_act": torch.ones(len(s))},
                         cfg.eval_dir(run) / "features.safetensors")
    return study


@pytest.fixture
def fake_study(tmp_path):
    return fabricate(S.open_study("smoke", str(tmp_path / "figs"), f"out_dir={tmp_path / 'res'}"))


def test_open_study_paths(tmp_path, monkeypatch):
    study = S.open_study("smoke")
    assert study.results == ROOT / "results" / "smoke"
    assert study.figures == ROOT / "results" / "smoke" / "scratch"  # by hand: never figures/<profile>
    assert S.open_study("smoke", "figs").figures == ROOT / "figs"
    monkeypatch.setenv("SAELIB_PROFILE", "smoke")
    assert S.open_study().cfg.name == "smoke"
    monkeypatch.delenv("SAELIB_PROFILE")
    assert S.open_study().cfg.name == "tiny"  # what `make figures` builds


def test_missing_artifact_names_the_step(tmp_path):
    study = S.open_study("smoke", overrides=f"out_dir={tmp_path}")
    with pytest.raises(FileNotFoundError, match="eval.json is missing.*python -m saelib evaluate --profile smoke"):
        S.load_evals(study)


def test_stale_results_are_refused_naming_the_difference(fake_study, tmp_path):
    edited = S.open_study("smoke", overrides=f"out_dir={tmp_path / 'res'},runs.l0a_3.lambda_sparsity=9.9e-3")
    S.load_evals(edited, ["l0a_1"])  # untouched runs still load
    with pytest.raises(ArtifactError, match=r"l0a_3/eval.json is stale.*lambda_sparsity: 0.002 then, 0.0099 now"):
        S.load_evals(edited, ["l0a_3"])
    with pytest.raises(ArtifactError, match=r"runs/l0a_3 is stale"):
        S.load_metrics(edited, ["l0a_3"])
    with pytest.raises(ArtifactError, match="stale"):
        tables.summary_table(edited)


def test_seeds_that_differ_in_more_than_the_seed_are_not_averaged(fake_study):
    path = fake_study.cfg.eval_dir("l0a_1_s1") / "eval.json"
    ev = json.loads(path.read_text())
    ev.pop("sha256")
    ev["settings"]["run"]["lambda_sparsity"] = 0.5  # made from another config, yet with the current hash
    atomic_write_json(path, ev)
    with pytest.raises(ArtifactError, match="differ in more than the seed.*lambda_sparsity"):
        tables.summary_table(fake_study)


def test_non_finite_and_truncated_results_are_refused(fake_study):
    cfg = fake_study.cfg
    ev_path = cfg.eval_dir("l0a_2") / "eval.json"
    ev = json.loads(ev_path.read_text())
    ev.pop("sha256")
    atomic_write_json(ev_path, ev | {"mse_legacy": float("nan")})
    with pytest.raises(ArtifactError, match="non-finite mse_legacy"):
        tables.summary_table(fake_study)
    m = cfg.run_dir("l0a_1") / "metrics.csv"
    m.write_text(m.read_text()[:-8])  # cut mid-row
    with pytest.raises(ArtifactError, match="metrics.csv is truncated or changed"):
        S.load_metrics(fake_study, ["l0a_1"])
    (cfg.eval_dir("l0a_3") / "eval.json").write_text('{"run": "l0a_3", "l0": 1')  # truncated JSON
    with pytest.raises(ArtifactError, match="eval.json is truncated or corrupt.*saelib evaluate"):
        S.load_evals(fake_study, ["l0a_3"])
    ev = json.loads((cfg.eval_dir("l0a_4") / "eval.json").read_text())
    ev["l0"] += 1  # a changed number: the checksum no longer matches
    (cfg.eval_dir("l0a_4") / "eval.json").write_text(json.dumps(ev))
    with pytest.raises(ArtifactError, match="fails its checksum"):
        S.load_evals(fake_study, ["l0a_4"])


def test_summary_table_columns_and_values(fake_study):
    table = tables.summary_table(fake_study)
    spread = [c for m in tables.TABLE1_METRICS for c in (m, m + tables.SPREAD)]
    assert list(table.columns) == ["label", "lambda_0", "lambda_1", "seeds", *spread, "reference"]
    assert list(table.index) == fake_study.main_runs
    assert table.reference.sum() == 1 and table.reference[fake_study.reference]
    first = table.iloc[0]  # l0a_1 (i = 0) and l0a_1_s1 (i = 1): mean and sample std of the two seeds
    assert first.seeds == 2
    assert (first.l0, first.mse_legacy, first.dead, first["dense_gt_0.1"]) == pytest.approx((10.5, 0.015, 0.5, 1.0))
    assert first.l0_std == pytest.approx(2 ** -0.5)
    assert first.lambda_0 == 8e-4 and math.isnan(first.lambda_1)
    assert table.loc["ref_l1"].lambda_1 == 1e-3 and math.isnan(table.loc["ref_l1"].lambda_0)


def test_summary_table_adds_the_released_reference(fake_study):
    folder = fake_study.results / "runs" / S.RELEASED_RUN
    ev = json.loads((fake_study.cfg.eval_dir("ref_l1") / "eval.json").read_text()) | {"label": "released"}
    atomic_write_json(folder / "eval.json", ev)
    table = tables.summary_table(fake_study)
    assert table.index[-1] == S.RELEASED_RUN and table.label.iloc[-1] == "released"
    assert np.isnan(table.l0_std.iloc[-1])


def test_families_and_ablation_table(fake_study):
    assert {fake_study.family(c) for c in fake_study.configurations} == set(FAMILIES)  # smoke has every family
    assert fake_study.family("ref_l1_s1") == REFERENCE_FAMILY
    table = tables.ablation_table(fake_study)
    lam = lambda c: fake_study.cfg.run(c).lambda_sparsity  # noqa: E731
    assert list(table.index) == sorted(fake_study.configurations,
                                       key=lambda c: (FAMILIES.index(fake_study.family(c)), lam(c)))
    assert (table.seeds == 2).all()
    verdict = tables.ablation_verdict(fake_study)
    assert len(verdict.splitlines()) == len(tables.ABLATION_QUESTIONS) and "the L0 function" in verdict


def _evals(rows):
    return pd.DataFrame(rows, columns=["config", "family", "seed", "label", "l0", "dead"])


def test_matched_interpolates_each_seed_in_log_l0():
    e = _evals([("a1", "a", 0, "x", 20.0, 1.0), ("a1", "a", 1, "x", 20.0, 1.0),
                ("b1", "b", 0, "y", 10.0, 40.0), ("b2", "b", 0, "z", 40.0, 48.0),
                ("b1", "b", 1, "y", 10.0, 42.0), ("b2", "b", 1, "z", 40.0, 50.0)])
    m = tables.matched(e, tables.Question("q", "a", "b", "dead", True, "fewer"))
    # log 20 is halfway between log 10 and log 40: seed 0 gives 44, seed 1 gives 46
    assert m["b"].iloc[0] == pytest.approx(45.0) and m.b_l0.iloc[0] == "10-40"
    assert m.verdict.iloc[0] == "holds"  # 1 (no spread) against 44 and 46: the Welch interval excludes 0
    close = e.assign(dead=[1.0, 1.0, 0.0, 8.0, 2.0, 10.0])  # 1 against 4 and 6: with 2 seeds, too close to tell
    assert tables.matched(close, tables.Question("q", "a", "b", "dead", True, "fewer")).verdict.iloc[0] == \
        "cannot tell at this noise"
    far = e.assign(l0=[100.0, 100.0, 10.0, 40.0, 10.0, 40.0])
    assert tables.matched(far, tables.Question("q", "a", "b", "dead", True, "fewer")).empty


def test_verdicts_hold_fail_or_cannot_tell_with_the_seeds_spread():
    q = tables.Question("q", "a", "b", "dead", True, "fewer dead features")
    base = [("b1", "b", 0, "y", 10.0, 10.0), ("b2", "b", 0, "z", 40.0, 10.0),
            ("b1", "b", 1, "y", 10.0, 12.0), ("b2", "b", 1, "z", 40.0, 12.0)]
    worse = _evals(base + [("a1", "a", 0, "x", 20.0, 30.0), ("a1", "a", 1, "x", 20.0, 31.0)])
    noisy = _evals(base + [("a1", "a", 0, "x", 20.0, 2.0), ("a1", "a", 1, "x", 20.0, 30.0)])
    assert tables.matched(worse, q).verdict.iloc[0] == "does not hold"
    assert tables.matched(noisy, q).verdict.iloc[0] == "cannot tell at this noise"
    text = tables.verdict(noisy, [q])
    assert "cannot tell at this noise at 1 of 1 matched L0" in text and "b between L0 10-40" in text


def test_write_table_has_caption_verdict_and_provenance(fake_study, tmp_path):
    table = tables.summary_table(fake_study)
    caption = tables.caption(fake_study, "Table 1.")
    csv, md = tables.write_table(table, tmp_path / "figs", "table01_summary", caption, "- a verdict", fake_study)
    back = pd.read_csv(csv, index_col=0)
    pd.testing.assert_frame_equal(back, table, check_dtype=False, check_index_type=False)
    text = md.read_text()
    assert text.startswith("Table 1. Held-out evaluation on 8,192 tokens") and "sample standard deviation over 2" in text
    assert "| run | λ0 | λ1 | seeds | L0 | MSE (legacy) |" in text and " ± " in text and "| 8e-4 |" in text
    assert "- a verdict" in text and "_Made by saelib" in text and "config " in text
    assert not list((tmp_path / "figs").glob(".*.tmp"))  # atomic writes leave no temporaries


def test_compare_tables_within_tolerance(fake_study):
    table = tables.summary_table(fake_study)
    recorded = table.copy()
    assert tables.compare_tables(table, recorded).startswith(f"{table.size} values agree")
    runs = fake_study.main_runs
    recorded.loc[runs[1], "l0"] *= 1.02  # inside 5 %
    recorded.loc[runs[1], "dead"] += 3  # inside 8 features
    recorded.loc[runs[1], "l0_std"] += 0.01 * recorded.loc[runs[1], "l0"]
    assert "agree" in tables.compare_tables(table, recorded)
    recorded.loc[runs[2], "fvu"] *= 1.2
    recorded.loc[runs[0], "label"] = "other"
    verdict = tables.compare_tables(table, recorded)
    assert verdict.startswith("2 value(s) differ") and "fvu" in verdict and "label" in verdict
    assert "runs or columns differ" in tables.compare_tables(table, recorded.iloc[:-1])


def test_loaders_tag_runs_and_draw_dead_features_at_minus_ten(fake_study):
    m = S.load_metrics(fake_study)
    assert len(m) == 3 * len(fake_study.runs)
    assert set(m.run) == set(fake_study.runs) and set(m.loc[m.reference, "run"]) == {"ref_l1", "ref_l1_s1"}
    sp = S.load_sparsities(fake_study)
    dead = sp[sp.s == 0]
    assert (dead.log10_s == DEAD_LOG10).all() and len(dead) == sum(range(len(fake_study.runs)))
    assert np.allclose(sp[sp.s > 0].log10_s, np.log10(sp[sp.s > 0].s))


def test_palette_and_save_figure_with_provenance(fake_study, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    pal = plots.palette(fake_study)
    assert set(pal) == set(fake_study.labels.values())
    assert pal[fake_study.labels[fake_study.reference]] == plots.REFERENCE_COLOR
    assert len(set(pal.values())) == len(pal)
    style = plots.run_style(fake_study, fake_study.reference)
    assert style["linestyle"] == "--" and style["label"] == fake_study.labels[fake_study.reference]
    plots.use_style()
    fig, ax = plt.subplots()
    ax.plot([1, 2], [1, 2])
    png, pdf = plots.save_figure(fig, tmp_path / "figs", "fig00_test", fake_study)
    plt.close(fig)
    assert png.read_bytes()[:4] == b"\x89PNG" and pdf.read_bytes()[:4] == b"%PDF"
    rec = json.loads(Image.open(png).text["Provenance"])
    assert {"commit", "dirty", "versions", "device", "threads", "config_hash"} <= set(rec)
    assert b"config_hash" in pdf.read_bytes()
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["fig00_test.pdf", "fig00_test.png"]


def test_main_family_runs_are_the_posts():
    study = S.open_study("smoke")
    assert study.main_runs == ["l0a_1", "l0a_2", "l0a_3", "l0a_4", "l0a_5", "ref_l1"]
    assert all(study.family(r) == MAIN_FAMILY for r in study.main_runs[:-1])


def test_a_single_configuration_is_compared_with_the_other_family_interpolated_at_its_l0():
    e = _evals([("a1", "a", 0, "x", 10.0, 10.0), ("a2", "a", 0, "x", 40.0, 20.0),
                ("a1", "a", 1, "x", 10.0, 12.0), ("a2", "a", 1, "x", 40.0, 22.0),
                ("b1", "b", 0, "y", 20.0, 90.0), ("b1", "b", 1, "y", 20.0, 91.0)])
    m = tables.matched(e, tables.Question("q", "a", "b", "dead", True, "fewer"))
    assert m.interpolated.iloc[0] == "a" and m["a"].iloc[0] == pytest.approx(16.0)  # halfway: 15 and 17
    assert m.l0.iloc[0] == 20.0 and m.verdict.iloc[0] == "holds"


def test_verdict_movement_lists_every_verdict_of_both_and_flags_what_moved(fake_study, tmp_path):
    a = fake_study
    b = S.open_study("smoke", str(tmp_path / "figs_b"), f"out_dir={tmp_path / 'res_b'}")
    # B: the reference gets far worse MSE and far higher L0 on both seeds, so every main run now dominates it
    ref = a.cfg.replicates(a.reference)
    fabricate(b, {r: {"mse_legacy": 5.0 + i * 0.1, "l0": 500.0 + i} for i, r in enumerate(ref)})
    rows_a = tables.verdict_rows(a)
    assert set(rows_a.verdict) <= {"holds", "does not hold", "cannot tell at this noise",
                                  "cannot tell at this noise (one seed)"}
    assert len(rows_a[rows_a.question == "lower L0 than the reference"]) == len(a.main_runs) - 1
    m = tables.verdict_movement(a, b)
    l0b = m[m.question == "lower L0 than the reference"]
    assert (l0b["verdict B"] == "holds").all() and (l0b["diff B"] < -400).all()
    assert l0b.moved.any() and not m.loc[~m.moved, ["verdict A"]].isna().any().any()
    text = tables.movement_markdown(m, a, b)
    assert f"{int(m.moved.sum())} of {len(m)} verdicts moved" in text and text.count("\n| ") == len(m) + 1
