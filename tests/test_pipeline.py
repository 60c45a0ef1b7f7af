"""The smoke pipeline end to end, offline: data -> LM -> every run -> evaluation, through the CLI."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from saelib.__main__ import main
from saelib.archs import load_inference
from saelib.config import load_profile
from saelib.sae import SAE


def _one_per_family(cfg) -> list[str]:
    """The reference, the highlighted run and its second seed, and the first run of every other loss family:
    every kind of run the profile has, without training all of them twice in one test session (`make test`
    builds every smoke run through Snakemake already)."""
    from saelib.study import open_study

    study = open_study("smoke", overrides=f"out_dir={cfg.out_dir}")
    runs = [cfg.reference_run, cfg.highlight_run, study.other_seed(cfg.highlight_run)]
    for c in study.configurations:
        if study.family(c) not in {study.family(r) for r in runs}:
            runs.append(c)
    return runs


@pytest.mark.slow
def test_smoke_pipeline_end_to_end(smoke_lm):
    out = smoke_lm
    over = ["--set", f"out_dir={out}", "--no-progress"]
    cfg = load_profile("smoke", {"out_dir": str(out)})
    runs = _one_per_family(cfg)
    assert len(runs) == 9  # three of the post's runs, the other four ReLU families, TopK, BatchTopK, JumpReLU
    # one process trains them all on one activation stream, one evaluates them all
    assert main(["train", "--profile", "smoke", "--run", ",".join(runs), *over]) == 0
    assert main(["evaluate", "--profile", "smoke", "--run", ",".join(runs), *over]) == 0
    lm = json.loads((out / "lm" / "info.json").read_text())
    assert lm["heldout_loss_nats"] < lm["heldout_unigram_entropy_nats"] + 0.5  # 30 steps: near unigram
    for run in runs:
        folder = out / "runs" / run
        ev = json.loads((folder / "eval.json").read_text())
        for k in ("l0", "mse_legacy", "mse", "fvu", "l1", "dead", "dead_pct", "dense_gt_0.1", "dense_gt_0.2",
                  "ce_clean", "ce_sae", "ce_zero", "ce_recovered"):
            assert np.isfinite(ev[k]), (run, k)
        assert ev["ce_clean"] < ev["ce_sae"] < ev["ce_zero"] + 1.0
        assert ev["tokens"] < cfg.eval.tokens and ev["exclude_bos"]  # BOS positions left out
        feats = load_file(str(folder / "features.safetensors"))
        s = feats["sparsity"]
        assert s.shape == (cfg.run(run).d_sae(cfg.lm.d_model),)
        assert int((s == 0).sum()) == ev["dead"]
        assert abs(float(s.sum()) - ev["l0"]) < 1e-3 * max(1.0, ev["l0"])  # L0 = sum_f s_f
        assert ev["eval_hash"] == cfg.stage_hash("eval", run) and "provenance" in ev
        m = pd.read_csv(folder / "metrics.csv")
        assert m.step.iloc[-1] == cfg.train.steps - 1
        if cfg.run(run).architecture != "relu":  # trained by sae-lens's classes: saved in its format
            sae = load_inference(folder, "test")
            assert sae.d_sae == s.shape[0]
            continue
        sae = SAE.load(folder)
        assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(sae.d_sae), atol=1e-5)
