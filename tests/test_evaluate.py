"""Evaluation: the LM's loss with activations replaced, and several SAEs evaluated in one pass."""

import json

import pytest
import torch

from saelib.activations import hook_activations
from saelib.config import load_profile
from saelib.evaluate import evaluate_run, heldout_sequences, evaluate_runs, lm_loss_with
from saelib.lm import load_lm
from saelib.train import train_runs


def test_loss_from_the_hook_equals_the_hooked_full_forward(smoke_lm):
    cfg = load_profile("smoke", {"out_dir": str(smoke_lm)})
    model, _ = load_lm(cfg, torch.device("cpu"))
    toks = torch.as_tensor(heldout_sequences(cfg)[:4])
    hook = cfg.activations.hook
    x = hook_activations(model, toks, hook)
    noisy = x + 2 * x.std() * torch.randn_like(x)
    for replace in (None, torch.zeros_like(x), noisy):
        want = (float(model(toks, return_type="loss")) if replace is None else
                float(model.run_with_hooks(toks, return_type="loss", fwd_hooks=[(hook, lambda a, hook: replace)])))
        assert lm_loss_with(model, toks, hook, x, replace) == pytest.approx(want, rel=1e-5)
    # the replacement matters: a noisy residual stream costs loss on real text
    assert lm_loss_with(model, toks, hook, x, noisy) > lm_loss_with(model, toks, hook, x, None)


def test_group_evaluation_equals_one_run_at_a_time(smoke_lm):
    cfg = load_profile("smoke", {"out_dir": str(smoke_lm), "train.tokens": 10 * 1024})
    names = ["l0a_5", "l1_freq_3"]
    train_runs(cfg, names, progress=False)
    together = evaluate_runs(cfg, names, progress=False)
    for n in names:
        alone = evaluate_run(cfg, n, progress=False)
        for k, v in alone.items():
            if isinstance(v, str):
                assert together[n][k] == v
            elif k != "eval_seconds":
                assert together[n][k] == pytest.approx(v, rel=1e-6, abs=1e-9), (n, k)
        assert json.loads((smoke_lm / "runs" / n / "eval.json").read_text())["run"] == n
    assert together[names[0]]["l0"] != together[names[1]]["l0"]
