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


@torch.no_grad()
def evaluate_sae(model, sae: SAE, cfg: ProfileConfig, eps: float, progress: bool = True) -> tuple[dict, FeatureStats]:
    hook = cfg.activations.hook
    device = next(model.parameters()).device
    seqs = heldout_sequences(cfg)
    stats = FeatureStats(sae.d_in, sae.d_sae, eps, device)
    ce = {"clean": 0.0, "sae": 0.0, "zero": 0.0}
    n_pred = 0
    splice = lambda act, hook: sae(act.reshape(-1, act.shape[-1])).x_hat_BD.reshape(act.shape)  # noqa: E731
    zero = lambda act, hook: torch.zeros_like(act)  # noqa: E731
    per = cfg.eval.batch_sequences
    for i in tqdm(range(0, len(seqs), per), desc="eval", disable=not progress, mininterval=2):
        toks = torch.as_tensor(seqs[i:i + per], device=device, dtype=torch.long)
        x = hook_activations(model, toks, hook).reshape(-1, sae.d_in)
        out = sae(x)
        stats.update(x, out.f_BF, out.x_hat_BD)
        k = toks.shape[0] * (toks.shape[1] - 1)
        ce["clean"] += float(model(toks, return_type="loss")) * k
        ce["sae"] += float(model.run_with_hooks(toks, return_type="loss", fwd_hooks=[(hook, splice)])) * k
        ce["zero"] += float(model.run_with_hooks(toks, return_type="loss", fwd_hooks=[(hook, zero)])) * k
        n_pred += k
    ce = {f"ce_{k}": v / n_pred for k, v in ce.items()}
    ce["ce_recovered"] = ce_recovered(ce["ce_clean"], ce["ce_sae"], ce["ce_zero"])
    return stats.summary() | ce, stats


def evaluate_run(cfg: ProfileConfig, run_name: str, progress: bool = True) -> dict:
    folder = run_folder(cfg, run_name)
    device = pick_device(cfg.train.device)
    t0 = time.time()
    model, _ = load_lm(cfg, device)
    check_hook(model, cfg.activations.hook)
    sae = SAE.load(folder, device)
    run = cfg.run(run_name)
    result, stats = evaluate_sae(model, sae, cfg, run.eps, progress)
    save_safetensors({"sparsity": stats.sparsity().cpu(), "max_act": stats.max_act_F.cpu()},
                     folder / "features.safetensors")
    result = {"run": run_name, "label": run.label, "sparsity_term": run.sparsity,
              "lambda_sparsity": run.lambda_sparsity, "lambda_min": run.lambda_min, "seed": run.seed,
              "d_sae": sae.d_sae, **result, "eval_seconds": round(time.time() - t0, 2)}
    atomic_write_json(folder / "eval.json", result)
    return result
