"""The SPEC quantities (SPEC "Definitions"), one pure function each, and `sae_loss`, which assembles the named
terms of a training step from them. The trainer, the metrics and the analyses all call these.

Every function takes one SAE's tensors (activations f_BF, reconstruction x_hat_BD) or a stack's, with a
leading run axis (f_RBF, x_hat_RBD) and per-run hyperparameters as (R,) tensors; reductions are over the
batch (dim -2) and features / d_in (dim -1), so a stack gets one value per run.

    loss = MSE + lambda_sparsity * {L0approx | L1 | tanh} + lambda_min * P_freq (+ ghost)
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .kernels import colsum, firing_counts

R_FLOOR = 1e-10  # r_f is floored here so that log10(r_f) stays finite (dead features sit at -10)


# ---- sparsity measures, elementwise in the activation a >= 0 (Figures 1 and 2 plot these) ----

def ratio(a: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
    """a / (a + eps): the approximation of the L0 indicator (SPEC "L0approx")."""
    return a / (a + eps)


def measure(name: str, a: torch.Tensor, eps: float = 0.2) -> torch.Tensor:
    """Per-activation contribution to a sparsity measure: `l0` (indicator), `l1`, `tanh`, `l0approx`."""
    if name == "l0":
        return (a > 0).to(a.dtype)
    if name == "l1":
        return a
    if name == "tanh":
        return torch.tanh(a)
    if name == "l0approx":
        return ratio(a, eps)
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


# ---- per-feature batch quantities ----

def ratio_colsum(f_BF: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
    """sum_b a/(a+eps) per feature: (B, F) -> (F,). The trainer gets it from `kernels.relu_ratio`, which
    computes exactly this with a hand-written backward."""
    return colsum(ratio(f_BF, eps))


def s_hat(ratio_colsum_F: torch.Tensor, n_b: int) -> torch.Tensor:
    """Batch sparsity estimate s_hat_f = (1/n_b) sum_b a/(a+eps)."""
    return ratio_colsum_F / n_b


def firing_fraction(f_BF: torch.Tensor) -> torch.Tensor:
    """Fraction of the batch on which each feature fires (f > 0): what the rolling estimate averages."""
    return firing_counts(f_BF) / f_BF.shape[-2]


# ---- per-token means (one value per SAE) ----

def l0approx(ratio_colsum_F: torch.Tensor, n_b: int) -> torch.Tensor:
    """L0approx = (1/n_b) sum_b sum_f a/(a+eps), from the per-feature sums."""
    return ratio_colsum_F.sum(-1) / n_b


def l1(f_colsum_F: torch.Tensor, n_b: int) -> torch.Tensor:
    """L1 = mean over tokens of sum_f f, from the per-feature sums over the batch (`kernels.colsum(f)`)."""
    return f_colsum_F.sum(-1) / n_b


def tanh_sparsity(f_BF: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of sum_f tanh(f) (the third measure of Figures 1 and 2, usable as a penalty)."""
    return colsum(torch.tanh(f_BF)).sum(-1) / f_BF.shape[-2]


def l0(fired_F: torch.Tensor, n_b: int) -> torch.Tensor:
    """L0 = mean over tokens of the number of features with f > 0, from the firing counts (`kernels.firing_counts`)."""
    return fired_F.sum(-1) / n_b


def legacy_mse(x_hat_BD: torch.Tensor, x_BD: torch.Tensor, center_D: torch.Tensor | None = None) -> torch.Tensor:
    """MSE of the reference SAEs: mean_{b,d} (x_hat - x)^2 / ||x_b - mean(x)||_2, where the mean is the batch's
    (training) or `center_D` (evaluation: the whole evaluation set's). `x_BD` is shared by every SAE of a
    stack. The norm is floored at 1e-6: it is 0 for a batch of one token or of identical rows."""
    center = x_BD.mean(-2) if center_D is None else center_D
    norm_B1 = (x_BD - center).norm(dim=-1, keepdim=True).clamp_min(1e-6)
    return ((x_hat_BD - x_BD) ** 2 / norm_B1).mean((-2, -1))


# ---- the frequency penalty (SPEC: P_freq with the straight-through s_eff) ----

def straight_through(s_hat_F: torch.Tensor, r_F: torch.Tensor) -> torch.Tensor:
    """s_eff as SPEC writes it: value r (the rolling estimate), gradient that of s_hat."""
    return s_hat_F + (r_F - s_hat_F).detach()


def log10_straight_through(s_hat_F: torch.Tensor, r_F: torch.Tensor) -> torch.Tensor:
    """log10(s_eff) with value log10(r) and gradient d(s_hat) / (r ln 10): the same as log10(straight_through())
    but without forming s_eff, whose float32 value keeps only ~7 digits of s_hat and so loses r when
    s_hat >> r (s_hat = 1e-2, r = 1e-6 gives 1e-4 relative error; r = 1e-9 gives 10%)."""
    return torch.log10(r_F) + (s_hat_F - s_hat_F.detach()) / (r_F * math.log(10))


def freq_penalty(log10_s_F: torch.Tensor, s_min: float | torch.Tensor) -> torch.Tensor:
    """P_freq = sum_f ReLU(log10(s_min) - log10(s_f)), from log10(s_f). For a stack, s_min is (R, 1)."""
    log10_s_min = math.log10(s_min) if not torch.is_tensor(s_min) else torch.log10(s_min)
    return torch.relu(log10_s_min - log10_s_F).sum(-1)


# ---- ghost gradients (L1 reference recipe) ----

GHOST_VARIANTS = ("scalar", "per_element", "exp_relu")
"""How the ghost loss is formed (RunConfig.ghost_variant; README "Ghost gradients"):
- `scalar`: ghost MSE rescaled by one scalar, mean(MSE) / (mean(ghost MSE) + 1e-6); b_dec detached in the
  ghost path, so only dead features' parameters get its gradient;
- `per_element`: the reference recipe's later code: rescaled per element, (mse / (ghost_mse + 1e-6)).detach()
  * ghost_mse, then the mean; b_dec receives the ghost gradient;
- `exp_relu`: the recipe's code as the released reference SAEs were trained with it (early February 2024): as
  `per_element`, but the ghost output is exp(ReLU(pre)) (for a dead feature that is exp(0) = 1: its encoder gets
  no ghost gradient, only its decoder row), and the residual it is asked to explain is not detached, so the
  ghost loss also pushes on the live features through the reconstruction."""


def ghost_loss(x_BD: torch.Tensor, x_hat_BD: torch.Tensor, pre_BK: torch.Tensor, W_dec_KD: torch.Tensor,
               mse: torch.Tensor, variant: str = "scalar") -> torch.Tensor:
    """Ghost gradients: dead features, with exp() in place of ReLU, are asked to explain the residual.

    `pre_BK`: the dead features' pre-activations (`sae.encode_pre(x, features=dead)`), `W_dec_KD` their
    decoder rows. The ghost output is rescaled per token to half the residual's norm, its legacy MSE against
    the residual is rescaled to the size of the real MSE (`variant`: see GHOST_VARIANTS)."""
    residual_BD = x_BD - x_hat_BD if variant == "exp_relu" else (x_BD - x_hat_BD).detach()
    ghost_BD = torch.exp(torch.relu(pre_BK) if variant == "exp_relu" else pre_BK) @ W_dec_KD
    scale_B1 = (residual_BD.norm(dim=-1, keepdim=True) / (2 * ghost_BD.norm(dim=-1, keepdim=True) + 1e-6)).detach()
    ghost_BD = ghost_BD * scale_B1
    if variant == "scalar":
        ghost_mse = legacy_mse(ghost_BD, residual_BD)
        return (mse / (ghost_mse + 1e-6)).detach() * ghost_mse
    # per element: the same legacy normalisation, element by element, before the mean
    norm_B1 = (residual_BD - residual_BD.mean(-2)).norm(dim=-1, keepdim=True).clamp_min(1e-6)
    x_norm_B1 = (x_BD - x_BD.mean(-2)).norm(dim=-1, keepdim=True).clamp_min(1e-6)
    mse_BD = ((x_hat_BD - x_BD) ** 2 / x_norm_B1).detach()
    ghost_mse_BD = (ghost_BD - residual_BD) ** 2 / norm_B1
    return ((mse_BD / (ghost_mse_BD + 1e-6)).detach() * ghost_mse_BD).mean()


# ---- the loss of a step ----

class LossTerms(NamedTuple):
    """The named terms of a step; for a stack, each is an (R,) tensor (one value per run)."""

    mse: torch.Tensor  # legacy MSE (the reconstruction term)
    sparsity: torch.Tensor  # L0approx, L1 or tanh: whichever the run uses
    freq: torch.Tensor  # P_freq (0 when lambda_min = 0)
    ghost: torch.Tensor  # ghost-gradient term (0 when off or nothing dead)
    total: torch.Tensor


def sae_loss(x_BD: torch.Tensor, x_hat_BD: torch.Tensor, sparsity: torch.Tensor, s_hat_F: torch.Tensor | None,
             r_F: torch.Tensor | None, lambda_sparsity, lambda_min, s_min, ghost: torch.Tensor | None = None
             ) -> LossTerms:
    """The terms of one step, from the step's reconstruction, its sparsity term (L0approx, L1 or tanh, as the
    run uses), s_hat and the rolling estimate r_f (None where P_freq is off), and the ghost term. Pure: it
    changes no state. Coefficients are floats for one SAE, (R,) tensors for a stack."""
    mse = legacy_mse(x_hat_BD, x_BD)
    zero = torch.zeros_like(mse)
    freq = freq_penalty(log10_straight_through(s_hat_F, r_F), s_min) if s_hat_F is not None else zero
    ghost = zero if ghost is None else ghost
    total = mse + lambda_sparsity * sparsity + lambda_min * freq + ghost
    return LossTerms(mse, sparsity, freq, ghost, total)
