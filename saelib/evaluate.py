"""Evaluation of a trained SAE on held-out tokens: feature sparsities, dead count, L0, MSEs, FVU, L1, and
the LM's cross-entropy loss with the SAE spliced in at the hook, against clean and zero-ablated.

Writes `eval.json` (scalars) and `features.safetensors` (per-feature s_f and max activation).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from tqdm.auto import tqdm

from .activations import hook_activations
from .config import ProfileConfig
from .data import load_npy
from .io import atomic_write_json, save_safetensors
from .lm import check_hook, load_lm, pick_device
from .metrics import FeatureStats
from .sae import SAE
from .train import run_folder


def heldout_sequences(cfg: ProfileConfig) -> np.ndarray:
    seqs = load_npy(cfg.out / "data" / "heldout.npy")
    n = max(1, cfg.eval.tokens // cfg.activations.context)
    if len(seqs) < n:
        raise ValueError(f"only {len(seqs)} held-out sequences, eval.tokens asks for {n}: lower eval.tokens")
    return seqs[:n]


def ce_recovered(clean: float, spliced: float, zero: float) -> float:
    """Fraction of the loss gap between zero-ablation and the clean model that the SAE recovers."""
    return (zero - spliced) / (zero - clean) if zero != clean else float("nan")


def lm_loss_with(model, toks: torch.Tensor, hook: str, x_BSD: torch.Tensor, replace: torch.Tensor | None) -> float:
    """The LM's mean next-token loss on `toks` with the activation at `hook` replaced by `replace`
    (None: clean). At a `hook_resid_pre` the model is run only from that block on, from the activations
    `x_BSD` already computed; elsewhere the whole model runs with the replacement hooked in."""
    layer = int(hook.split(".")[1])
    if hook.endswith("hook_resid_pre"):
        resid = x_BSD if replace is None else replace
        return float(model(resid, start_at_layer=layer, tokens=toks, return_type="loss"))
    if replace is None:
        return float(model(toks, return_type="loss"))
    return float(model.run_with_hooks(toks, return_type="loss", fwd_hooks=[(hook, lambda act, hook: replace)]))


@torch.no_grad()
def evaluate_saes(model, saes: list[SAE], cfg: ProfileConfig, eps: list[float], progress: bool = True
                  ) -> list[tuple[dict, FeatureStats]]:
    """Evaluate several SAEs on the same held-out tokens: the LM's activations and its clean and
    zero-ablated losses are computed once per batch for all of them."""
    hook = cfg.activations.hook
    device = next(model.parameters()).device
    seqs = heldout_sequences(cfg)
    stats = [FeatureStats(s.d_in, s.d_sae, e, device) for s, e in zip(saes, eps)]
    ce_clean, ce_zero, ce_sae = 0.0, 0.0, [0.0] * len(saes)
    n_pred = 0
    per = cfg.eval.batch_sequences
    for i in tqdm(range(0, len(seqs), per), desc="eval", disable=not progress, mininterval=2):
        toks = torch.as_tensor(seqs[i:i + per], device=device, dtype=torch.long)
        x_BSD = hook_activations(model, toks, hook)
        x = x_BSD.reshape(-1, x_BSD.shape[-1])
        k = toks.shape[0] * (toks.shape[1] - 1)  # predicted tokens in the batch
        ce_clean += lm_loss_with(model, toks, hook, x_BSD, None) * k
        ce_zero += lm_loss_with(model, toks, hook, x_BSD, torch.zeros_like(x_BSD)) * k
        for j, (sae, st) in enumerate(zip(saes, stats)):
            out = sae(x)
            st.update(x, out.f_BF, out.x_hat_BD)
            ce_sae[j] += lm_loss_with(model, toks, hook, x_BSD, out.x_hat_BD.reshape(x_BSD.shape)) * k
        n_pred += k
    results = []
    for st, spliced in zip(stats, ce_sae):
        ce = {"ce_clean": ce_clean / n_pred, "ce_sae": spliced / n_pred, "ce_zero": ce_zero / n_pred}
        ce["ce_recovered"] = ce_recovered(ce["ce_clean"], ce["ce_sae"], ce["ce_zero"])
        results.append((st.summary() | ce, st))
    return results


def evaluate_sae(model, sae: SAE, cfg: ProfileConfig, eps: float, progress: bool = True) -> tuple[dict, FeatureStats]:
    return evaluate_saes(model, [sae], cfg, [eps], progress)[0]


def evaluate_runs(cfg: ProfileConfig, run_names: list[str], progress: bool = True) -> dict[str, dict]:
    """Evaluate trained runs together; writes each run's `eval.json` and `features.safetensors`."""
    device = pick_device(cfg.train.device)
    t0 = time.time()
    runs = {n: cfg.run(n) for n in run_names}
    saes = [SAE.load(run_folder(cfg, n), device) for n in run_names]  # FileNotFoundError names the missing run
    model, _ = load_lm(cfg, device)
    check_hook(model, cfg.activations.hook)
    evaluated = evaluate_saes(model, saes, cfg, [r.eps for r in runs.values()], progress)
    seconds = round((time.time() - t0) / len(run_names), 2)
    out = {}
    for (name, run), sae, (result, stats) in zip(runs.items(), saes, evaluated):
        folder = run_folder(cfg, name)
        save_safetensors({"sparsity": stats.sparsity().cpu(), "max_act": stats.max_act_F.cpu()},
                         folder / "features.safetensors")
        out[name] = {"run": name, "label": run.label, "sparsity_term": run.sparsity,
                     "lambda_sparsity": run.lambda_sparsity, "lambda_min": run.lambda_min, "seed": run.seed,
                     "d_sae": sae.d_sae, **result, "eval_seconds": seconds}
        atomic_write_json(folder / "eval.json", out[name])
    return out


def evaluate_run(cfg: ProfileConfig, run_name: str, progress: bool = True) -> dict:
    return evaluate_runs(cfg, [run_name], progress)[run_name]
