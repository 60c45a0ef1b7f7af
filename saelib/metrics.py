"""Evaluation metrics (SPEC "Definitions"): L0, L1, legacy MSE, plain MSE, FVU, feature sparsity s_f, dead and
dense counts, accumulated over an evaluation set for a stack of SAEs (the per-batch quantities are the
functions of `losses`)."""

from __future__ import annotations

import math

import torch

from . import losses as L
from .kernels import colsum, firing_counts

DEAD_LOG10 = -10.0  # where dead features are drawn on log10(s_f) axes


def log10_sparsity(s_F: torch.Tensor) -> torch.Tensor:
    """log10(s_f) with dead features (s_f = 0) at -10."""
    return torch.where(s_F > 0, torch.log10(s_F.clamp_min(1e-30)), torch.full_like(s_F, DEAD_LOG10))


class FeatureStats:
    """Sums over an evaluation set for R SAEs of one width (kept tokens only): firing counts, max activation,
    reconstruction errors, L1, sum of a/(a+eps)."""

    def __init__(self, R: int, d_in: int, d_sae: int, eps_R11: torch.Tensor, device):
        z = lambda *s, dt=torch.float64: torch.zeros(*s, dtype=dt, device=device)  # noqa: E731
        self.eps_R11 = eps_R11
        self.fire_RF, self.max_act_RF = z(R, d_sae), z(R, d_sae, dt=torch.float32)
        self.sse_R, self.legacy_R, self.l1_R, self.l0approx_R = z(R), z(R), z(R), z(R)
        self.sum_x_D, self.sum_x2_D = z(d_in), z(d_in)
        self.n = 0

    @torch.no_grad()
    def update(self, x_BD: torch.Tensor, f_RBF: torch.Tensor, x_hat_RBD: torch.Tensor, center_D: torch.Tensor) -> None:
        # per-feature sums over the batch as BLAS mat-vecs (kernels.colsum), accumulated in float64
        self.fire_RF += firing_counts(f_RBF).double()
        torch.maximum(self.max_act_RF, torch.amax(f_RBF, -2), out=self.max_act_RF)
        self.sum_x_D += x_BD.sum(0).double()
        self.sum_x2_D += x_BD.double().pow(2).sum(0)
        B = x_BD.shape[0]
        self.sse_R += (x_hat_RBD - x_BD).double().pow(2).sum((-2, -1))
        self.legacy_R += L.legacy_mse(x_hat_RBD, x_BD, center_D).double() * B  # mean over d, summed over tokens
        self.l1_R += L.l1(colsum(f_RBF), 1).double()
        self.l0approx_R += L.ratio_colsum(f_RBF, self.eps_R11).double().sum(-1)
        self.n += B

    def sparsity(self) -> torch.Tensor:
        """s_f (R, F): fraction of evaluation tokens on which each feature fires."""
        return (self.fire_RF / max(self.n, 1)).float()

    def summary(self, i: int, high_density: tuple[float, ...] = (0.1, 0.2)) -> dict[str, float]:
        s = self.sparsity()[i]
        n, d = max(self.n, 1), self.sum_x_D.numel()
        var = float((self.sum_x2_D - self.sum_x_D.pow(2) / n).sum())
        dead = int((self.fire_RF[i] == 0).sum())
        sse = float(self.sse_R[i])
        out = {
            "tokens": self.n, "l0": float(self.fire_RF[i].sum()) / n, "l1": float(self.l1_R[i]) / n,
            "l0approx": float(self.l0approx_R[i]) / n, "mse_legacy": float(self.legacy_R[i]) / n,
            "mse": sse / (n * d), "fvu": sse / var if var > 0 else math.nan, "dead": dead,
            "dead_pct": 100.0 * dead / s.numel(),
        }
        for t in high_density:
            out[f"dense_gt_{t:g}"] = int((s > t).sum())
        return out
