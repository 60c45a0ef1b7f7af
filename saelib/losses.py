"""Loss terms (SPEC "Definitions"). Each is a small function; `sae_loss` assembles the named terms.

    loss = MSE + lambda_sparsity * {L0approx | L1 | tanh} + lambda_min * P_freq (+ ghost)
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .config import RunConfig
from .kernels import colsum, firing_counts
from .sae import SAEOutput
from .sparsity import SparsityTracker


class LossTerms(NamedTuple):
    mse: torch.Tensor  # legacy MSE (the reconstruction term)
    sparsity: torch.Tensor  # L0approx, L1 or tanh: whichever the run uses
    freq: torch.Tensor  # P_freq (0 when lambda_min = 0)
    ghost: torch.Tensor  # ghost-gradient term (0 when off or nothing dead)
    total: torch.Tensor


# ---- sparsity measures, elementwise in the activation a >= 0 (Figures 1 and 2 plot these) ----

def measure(name: str, a: torch.Tensor, eps: float = 0.2) -> torch.Tensor:
    """Per-activation contribution to a sparsity measure: `l0` (indicator), `l1`, `tanh`, `l0approx`."""
    if name == "l0":
        return (a > 0).to(a.dtype)
    if name == "l1":
        return a
    if name == "tanh":
        return torch.tanh(a)
    if name == "l0approx":
        return a / (a + eps)
    raise ValueError(f"unknown sparsity measure {name!r}; valid: l0, l1, tanh, l0approx")


def measure_derivative(name: str, a: torch.Tensor, eps: float = 0.2) -> torch.Tensor:
    """d measure / d a, analytic (the L0 indicator's derivative is 0 for a > 0)."""
    if name == "l0":
        return torch.zeros_like(a)
    if name == "l1":
        return torch.ones_like(a)
    if name == "tanh":
        return 1 - torch.tanh(a) ** 2
    if name == "l0approx":
        return eps / (a + eps) ** 2
    raise ValueError(f"unknown sparsity measure {name!r}; valid: l0, l1, tanh, l0approx")


# ---- terms ----

def legacy_mse(x_hat_BD: torch.Tensor, x_BD: torch.Tensor) -> torch.Tensor:
    """MSE of the reference SAEs: mean_{b,d} (x_hat - x)^2 / ||x_b - mean_batch(x)||_2.
    The norm is floored at 1e-6: it is 0 for a batch of one token or of identical rows."""
    norm_B1 = (x_BD - x_BD.mean(0)).norm(dim=-1, keepdim=True).clamp_min(1e-6)
    return ((x_hat_BD - x_BD) ** 2 / norm_B1).mean()


def l0approx(f_BF: torch.Tensor, eps: float) -> torch.Tensor:
    """L0approx = (1/n_b) sum_b sum_f a/(a+eps)."""
    return (f_BF / (f_BF + eps)).sum(-1).mean()


def l1(f_BF: torch.Tensor) -> torch.Tensor:
    return f_BF.sum(-1).mean()


def s_hat(f_BF: torch.Tensor, eps: float) -> torch.Tensor:
    """Batch sparsity estimate s_hat_f = (1/n_b) sum_b a/(a+eps)."""
    return (f_BF / (f_BF + eps)).mean(0)


def straight_through(s_hat_F: torch.Tensor, r_F: torch.Tensor) -> torch.Tensor:
    """s_eff as SPEC writes it: value r (the rolling estimate), gradient that of s_hat."""
    return s_hat_F + (r_F - s_hat_F).detach()


def log10_straight_through(s_hat_F: torch.Tensor, r_F: torch.Tensor) -> torch.Tensor:
    """log10(s_eff) with value log10(r) and gradient d(s_hat) / (r ln 10): the same as log10(straight_through())
    but without forming s_eff, whose float32 value keeps only ~7 digits of s_hat and so loses r when
    s_hat >> r (s_hat = 1e-2, r = 1e-6 gives 1e-4 relative error; r = 1e-9 gives 10%)."""
    return torch.log10(r_F) + (s_hat_F - s_hat_F.detach()) / (r_F * math.log(10))


def freq_penalty(log10_s_F: torch.Tensor, s_min: float) -> torch.Tensor:
    """P_freq = sum_f ReLU(log10(s_min) - log10(s_f)), from log10(s_f)."""
    return torch.relu(math.log10(s_min) - log10_s_F).sum()


def ghost_loss(x_BD, out: SAEOutput, sae, dead_F: torch.Tensor, mse: torch.Tensor) -> torch.Tensor:
    """Ghost gradients: dead features, with exp() in place of ReLU, are asked to explain the residual.

    The ghost output is rescaled to half the residual's norm, its legacy MSE against the residual is
    rescaled to the size of the real MSE, and only dead features' parameters receive its gradient
    (b_dec is detached in the ghost encoder).
    """
    residual_BD = (x_BD - out.x_hat_BD).detach()
    x_in = x_BD - sae.b_dec.detach() if sae.shape.pre_encoder_bias else x_BD
    pre_BK = x_in @ sae.W_enc[:, dead_F] + sae.b_enc[dead_F]
    ghost_BD = torch.exp(pre_BK) @ sae.W_dec[dead_F]
    scale_B1 = (residual_BD.norm(dim=-1, keepdim=True) / (2 * ghost_BD.norm(dim=-1, keepdim=True) + 1e-6)).detach()
    ghost_mse = legacy_mse(ghost_BD * scale_B1, residual_BD)
    return (mse / (ghost_mse + 1e-6)).detach() * ghost_mse


def needs_ratio(run: RunConfig) -> bool:
    """Whether the step uses a/(a+eps): for L0approx, for s_hat in the frequency penalty or rolling mean."""
    return run.sparsity == "l0approx" or run.lambda_min > 0 or run.rolling_source == "s_hat"


def sae_loss(run: RunConfig, sae, x_BD: torch.Tensor, out: SAEOutput, tracker: SparsityTracker) -> LossTerms:
    """All terms of one training step. Updates `tracker` (rolling window, steps since fired) in place.

    `out` comes from `sae(x, eps=run.eps)` (fused kernel: carries sum_b a/(a+eps)) or from `sae(x)`
    (plain autograd; the sums are formed here). Both give the same values and gradients."""
    f = out.f_BF
    n_b = f.shape[0]
    zero = f.new_zeros(())
    mse = legacy_mse(out.x_hat_BD, x_BD)
    ratio_sum_F = out.ratio_sum_F
    if ratio_sum_F is None and needs_ratio(run):
        ratio_sum_F = colsum(f / (f + run.eps))
    s_hat_F = ratio_sum_F / n_b if ratio_sum_F is not None else None  # s_hat_f = (1/n_b) sum_b a/(a+eps)

    with torch.no_grad():
        fired_F = firing_counts(f)
        value_F = s_hat_F.detach() if run.rolling_source == "s_hat" else fired_F.to(f.dtype) / n_b
        tracker.update(value_F, fired_F > 0)

    if run.sparsity == "l0approx":
        sparsity = ratio_sum_F.sum() / n_b  # L0approx = (1/n_b) sum_b sum_f a/(a+eps)
    elif run.sparsity == "l1":
        sparsity = l1(f)
    else:
        sparsity = torch.tanh(f).sum(-1).mean()
    freq = (freq_penalty(log10_straight_through(s_hat_F, tracker.rolling()), run.s_min) if run.lambda_min > 0
            else zero)
    ghost = zero
    if run.ghost:
        dead_F = tracker.dead_mask(run.dead_window)
        if bool(dead_F.any()):
            ghost = ghost_loss(x_BD, out, sae, dead_F, mse)
    total = mse + run.lambda_sparsity * sparsity + run.lambda_min * freq + ghost
    return LossTerms(mse, sparsity, freq, ghost, total)
