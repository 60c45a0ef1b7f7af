"""Evaluation of trained SAEs on held-out tokens: feature sparsities, dead count, L0, MSEs, FVU, L1, and the LM's
cross-entropy loss with each SAE spliced in at the hook, against clean and zero-ablated.

Several SAEs are evaluated in one pass (the LM's activations and its clean and zero-ablated losses are
computed once per batch; the SAEs of one width are encoded as one stack). Writes per run `eval.json`
(scalars, provenance) and `features.safetensors` (per-feature s_f and max activation).

Conventions (README "Evaluation"): with `eval.exclude_bos` (the default, as sae-lens evaluates), positions
whose token is BOS (the start of each sequence, and the document separators, which are the same token) are
left out of every reconstruction metric and keep their own activation when the SAE is spliced in; the
cross-entropy of predicting the token after them is left out too, and zero-ablation replaces every position.
The legacy MSE is centred on the mean of the whole evaluation set (a first pass computes it), so it does not
move with the evaluation batch size.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from .activations import hook_activations, hook_layer
from .config import ProfileConfig, config_diff
from .data import load_tokens
from .io import ArtifactError, atomic_write_json, read_json, save_safetensors
from .lm import check_hook, load_lm, pick_device
from .metrics import FeatureStats
from .provenance import provenance
from .sae import SAE, decode, encode_pre


def heldout_sequences(cfg: ProfileConfig) -> np.ndarray:
    seqs = load_tokens(cfg, "heldout")
    n = max(1, cfg.eval.tokens // cfg.activations.context)
    if len(seqs) < n:
        raise ValueError(f"only {len(seqs)} held-out sequences of {cfg.activations.context} tokens, eval.tokens asks "
                         f"for {n}: lower eval.tokens")
    return seqs[:n]


def ce_recovered(clean: float, spliced: float, zero: float) -> float:
    """Fraction of the loss gap between zero-ablation and the clean model that the SAE recovers."""
    return (zero - spliced) / (zero - clean) if zero != clean else float("nan")


def lm_token_losses(model, toks: torch.Tensor, hook: str, x_BSD: torch.Tensor, replace: torch.Tensor | None
                    ) -> torch.Tensor:
    """The LM's next-token losses (N, S-1) on `toks` with the activation at `hook` replaced by `replace`
    (None: clean). At a `hook_resid_pre` the model is run only from that block on, from the activations
    `x_BSD` already computed; elsewhere the whole model runs with the replacement hooked in."""
    if hook.endswith("hook_resid_pre"):
        resid = x_BSD if replace is None else replace
        return model(resid, start_at_layer=hook_layer(hook), tokens=toks, return_type="loss", loss_per_token=True)
    if replace is None:
        return model(toks, return_type="loss", loss_per_token=True)
    return model.run_with_hooks(toks, return_type="loss", loss_per_token=True,
                                fwd_hooks=[(hook, lambda act, hook: replace)])


def stack_saes(saes: list[SAE], device) -> dict:
    """The parameters of SAEs of one width stacked along a run axis, as `sae.encode_pre` and `decode` take them."""
    p = {k: torch.stack([getattr(s, k).detach() for s in saes]).to(device) for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
    pb = [s.shape.pre_encoder_bias for s in saes]
    p["pre_bias"] = torch.tensor(pb, dtype=torch.float32, device=device).view(-1, 1, 1) if any(pb) else False
    return p


def groups(saes: list, eps: list[float], device, conventions=(True,)):
    """Evaluation groups: this package's SAEs of one width as one stack, each other SAE (sae-lens inference models of
    TopK, BatchTopK, JumpReLU runs) alone. Returns ({key: SAE indices}, {key: x -> (f (R, B, F), x_hat (R, B, D))},
    {(convention, key): FeatureStats})."""
    widths: dict = {}
    for j, s in enumerate(saes):
        widths.setdefault(s.d_sae if isinstance(s, SAE) else f"sae{j}", []).append(j)
    encoders = {}
    for key, js in widths.items():
        if isinstance(key, int):
            p = stack_saes([saes[j] for j in js], device)

            def enc(x, p=p):
                f = torch.relu(encode_pre(x, p["W_enc"], p["b_enc"], p["b_dec"], p["pre_bias"]))
                return f, decode(f, p["W_dec"], p["b_dec"])
        else:
            def enc(x, sae=saes[js[0]]):
                f = sae.encode(x)
                return f[None], sae.decode(f)[None]
        encoders[key] = enc
    stats = {(c, key): FeatureStats(len(js), saes[js[0]].d_in, saes[js[0]].d_sae,
                                    torch.tensor([eps[j] for j in js], device=device).view(-1, 1, 1), device)
             for c in conventions for key, js in widths.items()}
    return widths, encoders, stats


@torch.no_grad()
def activation_mean(model, seqs: np.ndarray, cfg: ProfileConfig, keep_fn) -> torch.Tensor:
    """Mean activation at the hook over the evaluation set's kept tokens (the legacy MSE's centre)."""
    device = next(model.parameters()).device
    total, n = None, 0
    for i in range(0, len(seqs), cfg.eval.batch_sequences):
        toks = torch.as_tensor(seqs[i:i + cfg.eval.batch_sequences], device=device, dtype=torch.long)
        x = hook_activations(model, toks, cfg.activations.hook).reshape(-1, model.cfg.d_model)[keep_fn(toks)]
        s = x.double().sum(0)
        total = s if total is None else total + s
        n += x.shape[0]
    return (total / max(n, 1)).float()


@torch.no_grad()
def evaluate_saes(model, saes: list[SAE], cfg: ProfileConfig, eps: list[float], progress: bool = True,
                  bos_id: int | None = None) -> list[tuple[dict, torch.Tensor, torch.Tensor]]:
    """Evaluate several SAEs on the same held-out tokens. Returns per SAE (scalars, s_f, max activation).

    The scalars follow `eval.exclude_bos`; with a BOS id known, `other_bos_convention` holds L0, the MSEs, FVU and
    the cross-entropy losses under the other convention too (Table 1 shows both)."""
    hook = cfg.activations.hook
    device = next(model.parameters()).device
    seqs = heldout_sequences(cfg)
    exclude = cfg.eval.exclude_bos and bos_id is not None
    conventions = [exclude] + ([not exclude] if bos_id is not None else [])

    def keep_fn(toks, excl=exclude):  # tokens counted in reconstruction metrics: all, or all but BOS
        return (toks != bos_id).reshape(-1) if excl else torch.ones(toks.numel(), dtype=torch.bool, device=device)

    centers = {c: activation_mean(model, seqs, cfg, lambda t, c=c: keep_fn(t, c)) for c in conventions}
    widths, encoders, stats = groups(saes, eps, device, conventions)
    ce = {c: {"clean": 0.0, "zero": 0.0, "sae": [0.0] * len(saes), "n": 0} for c in conventions}
    per = cfg.eval.batch_sequences
    for i in tqdm(range(0, len(seqs), per), desc="eval", disable=not progress, mininterval=2):
        toks = torch.as_tensor(seqs[i:i + per], device=device, dtype=torch.long)
        x_BSD = hook_activations(model, toks, hook)
        x_all = x_BSD.reshape(-1, x_BSD.shape[-1])
        keeps = {c: keep_fn(toks, c) for c in conventions}
        # the loss predicting the token after a BOS is left out when BOS positions are (sae-lens's convention)
        masks = {c: (toks[:, :-1] != bos_id) if c else torch.ones_like(toks[:, :-1], dtype=torch.bool)
                 for c in conventions}
        clean = lm_token_losses(model, toks, hook, x_BSD, None)
        zero = lm_token_losses(model, toks, hook, x_BSD, torch.zeros_like(x_BSD))
        for c in conventions:
            ce[c]["clean"] += float(clean[masks[c]].sum())
            ce[c]["zero"] += float(zero[masks[c]].sum())
            ce[c]["n"] += int(masks[c].sum())
        for F, js in widths.items():
            f, x_hat = encoders[F](x_all)
            for c in conventions:
                keep = keeps[c]
                stats[c, F].update(x_all[keep], f[:, keep], x_hat[:, keep], centers[c])
                for r, j in enumerate(js):
                    spliced = torch.where(keep[:, None], x_hat[r], x_all).reshape(x_BSD.shape)
                    ce[c]["sae"][j] += float(lm_token_losses(model, toks, hook, x_BSD, spliced)[masks[c]].sum())
    results = []
    for j in range(len(saes)):
        F = next(F for F, js in widths.items() if j in js)
        r = widths[F].index(j)
        out = {}
        for c in conventions:
            n = ce[c]["n"]
            losses = {"ce_clean": ce[c]["clean"] / n, "ce_sae": ce[c]["sae"][j] / n, "ce_zero": ce[c]["zero"] / n}
            losses["ce_recovered"] = ce_recovered(losses["ce_clean"], losses["ce_sae"], losses["ce_zero"])
            summary = stats[c, F].summary(r) | losses | {"exclude_bos": c}
            if c == exclude:
                out |= summary
            else:
                out["other_bos_convention"] = {k: summary[k] for k in (
                    "exclude_bos", "tokens", "l0", "mse_legacy", "mse", "fvu", "ce_clean", "ce_sae", "ce_zero",
                    "ce_recovered")}
        st = stats[exclude, F]
        results.append((out, st.sparsity()[r].cpu(), st.max_act_RF[r].cpu()))
    return results


def evaluate_sae(model, sae: SAE, cfg: ProfileConfig, eps: float, progress: bool = True, bos_id: int | None = None
                 ) -> tuple[dict, torch.Tensor, torch.Tensor]:
    return evaluate_saes(model, [sae], cfg, [eps], progress, bos_id)[0]


def load_trained(cfg: ProfileConfig, name: str, device):
    """A run's SAE (this package's, or a sae-lens inference model for TopK / BatchTopK / JumpReLU runs), refused
    when it was trained with other settings than the config's now or holds NaN/Inf."""
    folder = cfg.run_dir(name)
    made_by = cfg.command("train", name)
    meta = read_json(folder / "cfg.json", made_by, keys=("train_hash", "settings"))
    if meta["train_hash"] != cfg.stage_hash("train", name):
        diff = config_diff(meta["settings"], cfg.stage_config("train", name), then="in the run")
        raise ArtifactError(f"{folder} was trained with other settings than the profile's now:\n  " +
                            "\n  ".join(diff[:8]) +
                            f"\nretrain it: `{made_by}`")
    if cfg.run(name).architecture != "relu":
        from .archs import load_inference

        sae = load_inference(folder, made_by, device)
    else:
        sae = SAE.load(folder, made_by=made_by)
    bad = [k for k, v in sae.state_dict().items() if torch.is_floating_point(v) and not bool(torch.isfinite(v).all())]
    if bad:
        raise ArtifactError(f"{folder / 'sae.safetensors'}: weights {', '.join(bad)} hold NaN or Inf; retrain: "
                            f"`{made_by}` with a lower train.lr or lambda")
    return sae.to(device)


def evaluate_runs(cfg: ProfileConfig, run_names: list[str], progress: bool = True) -> dict[str, dict]:
    """Evaluate trained runs together; writes each run's `eval.json` and `features.safetensors`."""
    device = pick_device(cfg.train.device)
    t0 = time.time()
    saes = [load_trained(cfg, n, device) for n in run_names]
    eps = [cfg.run(n).eps for n in run_names]
    if cfg.synthetic_source:
        from .synthetic import evaluate_synthetic

        evaluated = evaluate_synthetic(cfg, saes, eps, device)
    else:
        model, tok = load_lm(cfg, device)
        check_hook(model, cfg.activations.hook)
        evaluated = evaluate_saes(model, saes, cfg, eps, progress, tok.bos_id)
    seconds = round((time.time() - t0) / len(run_names), 2)
    out = {}
    for name, sae, (result, s_F, max_F) in zip(run_names, saes, evaluated):
        run = cfg.run(name)
        if not all(math.isfinite(v) for v in result.values() if isinstance(v, float)):
            bad = [k for k, v in result.items() if isinstance(v, float) and not math.isfinite(v)]
            raise ArtifactError(f"run {name}: evaluation gave non-finite {', '.join(bad)}; its SAE or the LM is broken")
        folder = cfg.eval_dir(name)
        per_feature = result.pop("per_feature", {})  # synthetic: which true features each latent points at
        save_safetensors({"sparsity": s_F, "max_act": max_F, **per_feature}, folder / "features.safetensors")
        knobs = ({"architecture": run.architecture, "k": run.k} if run.architecture in ("topk", "batchtopk") else
                 {"architecture": run.architecture, "lambda_sparsity": run.lambda_sparsity}
                 if run.architecture == "jumprelu" else
                 {"sparsity_term": run.sparsity, "lambda_sparsity": run.lambda_sparsity, "lambda_min": run.lambda_min})
        out[name] = {"run": name, "config": cfg.base_run(name), "label": run.label, "family": run.family, **knobs,
                     "seed": run.seed, "d_sae": sae.d_sae, **result,
                     "eval_seconds": seconds, "eval_hash": cfg.stage_hash("eval", name),
                     "train_hash": cfg.stage_hash("train", name), "settings": cfg.stage_config("eval", name),
                     "provenance": provenance(cfg, device)}
        atomic_write_json(folder / "eval.json", out[name])
    return out


def evaluate_run(cfg: ProfileConfig, run_name: str, progress: bool = True) -> dict:
    return evaluate_runs(cfg, [run_name], progress)[run_name]

