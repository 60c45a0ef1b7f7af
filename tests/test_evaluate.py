"""Evaluation: the LM's loss with activations replaced, several SAEs in one pass, BOS conventions, the legacy
MSE's independence of the evaluation batch size, and refusals of stale or broken SAEs."""

import json

import pytest
import torch

from saelib.activations import hook_activations
from saelib.config import load_profile
from saelib.evaluate import evaluate_run, evaluate_runs, heldout_sequences, lm_token_losses
from saelib.io import ArtifactError
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
        want = (model(toks, return_type="loss", loss_per_token=True) if replace is None else
                model.run_with_hooks(toks, return_type="loss", loss_per_token=True,
                                     fwd_hooks=[(hook, lambda a, hook: replace)]))
        torch.testing.assert_close(lm_token_losses(model, toks, hook, x, replace), want, rtol=1e-5, atol=1e-5)
    # the replacement matters: a noisy residual stream costs loss on real text
    assert lm_token_losses(model, toks, hook, x, noisy).mean() > lm_token_losses(model, toks, hook, x, None).mean()


@pytest.fixture(scope="module")
def trained(smoke_lm):
    cfg = load_profile("smoke", {"out_dir": str(smoke_lm), "train.tokens": 10 * 1024})
    names = ["l0a_5", "l1_freq_3", "ref_l1"]
    train_runs(cfg, names, progress=False)
    return cfg, names


def test_group_evaluation_equals_one_run_at_a_time(trained, smoke_lm):
    cfg, names = trained
    together = evaluate_runs(cfg, names, progress=False)
    for n in names:
        alone = evaluate_run(cfg, n, progress=False)
        for k, v in alone.items():
            if isinstance(v, float) and k != "eval_seconds":
                assert together[n][k] == pytest.approx(v, rel=1e-5, abs=1e-9), (n, k)
        assert json.loads((smoke_lm / "runs" / n / "eval.json").read_text())["run"] == n
    assert together[names[0]]["l0"] != together[names[1]]["l0"]


def test_bos_positions_are_left_out_as_sae_lens_does(trained):
    cfg, names = trained
    a = evaluate_runs(cfg, names[:1], progress=False)[names[0]]
    b = evaluate_runs(load_profile("smoke", cfg._overrides | {"eval.exclude_bos": False}), names[:1],
                      progress=False)[names[0]]
    seqs = heldout_sequences(cfg)
    from saelib.data import load_tokenizer

    bos = load_tokenizer(cfg).bos_id
    n_bos = int((seqs == bos).sum())
    assert b["tokens"] == seqs.size and a["tokens"] == seqs.size - n_bos and a["exclude_bos"]
    assert a["ce_clean"] != b["ce_clean"] and a["ce_zero"] != b["ce_zero"] and a["l0"] != b["l0"]


def test_legacy_mse_does_not_move_with_the_evaluation_batch_size(trained):
    cfg, names = trained
    a = evaluate_runs(cfg, names[:1], progress=False)[names[0]]
    b = evaluate_runs(load_profile("smoke", cfg._overrides | {"eval.batch_sequences": 7}), names[:1],
                      progress=False)[names[0]]
    # CUDA (TF32) picks other matmul kernels for another batch shape: 1.7e-5 apart on an H200; centring each
    # batch on its own mean (the old definition) moves it by about 1/(tokens in a batch), ~1e-3 here
    assert a["mse_legacy"] == pytest.approx(b["mse_legacy"], rel=1e-4 if torch.cuda.is_available() else 1e-6)


def test_a_stale_or_broken_sae_is_refused(trained):
    cfg, names = trained
    stale = load_profile("smoke", cfg._overrides | {f"runs.{names[0]}.lambda_sparsity": 0.5})
    with pytest.raises(ArtifactError, match=r"(?s)trained with other settings.*lambda_sparsity: 0.005 in the run, 0.5 now"):
        evaluate_runs(stale, names[:1], progress=False)
    from saelib.io import load_safetensors, save_safetensors

    path = cfg.run_dir(names[1]) / "sae.safetensors"
    w = load_safetensors(path)
    w["W_dec"][0, 0] = float("nan")
    save_safetensors(w, path)  # a valid file (checksum and all) holding NaN
    with pytest.raises(ArtifactError, match="W_dec hold NaN"):
        evaluate_runs(cfg, names[1:2], progress=False)
