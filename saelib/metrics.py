"""Metrics (SPEC "Definitions"): L0, L1, legacy MSE, plain MSE, FVU, feature sparsity s_f, dead count.

`batch_metrics` is for training logs; `FeatureStats` accumulates over an evaluation set.
"""

from __future__ import annotations

import math

import torch

from .kernels import colsum, firing_counts
from .losses import legacy_mse

DEAD_LOG10 = -10.0  # where dead features are drawn on log10(s_f) axes


@torch.no_grad()
def batch_metrics(x_BD: torch.Tensor, f_BF: torch.Tensor, x_hat_BD: torch.Tensor, eps: float) -> dict[str, float]:
    err = (x_hat_BD - x_BD).pow(2)
    var = (x_BD - x_BD.mean(0)).pow(2).sum()
    return {
        "l0": float((f_BF > 0).float().sum(-1).mean()),
        "l1": float(f_BF.sum(-1).mean()),
        "l0approx": float((f_BF / (f_BF + eps)).sum(-1).mean()),
        "mse_legacy": float(legacy_mse(x_hat_BD, x_BD)),
        "mse": float(err.mean()),
        "fvu": float(err.sum() / var.clamp_min(1e-12)),
    }


def log10_sparsity(s_F: torch.Tensor) -> torch.Tensor:
    """log10(s_f) with dead features (s_f = 0) at -10."""
    return torch.where(s_F > 0, torch.log10(s_F.clamp_min(1e-30)), torch.full_like(s_F, DEAD_LOG10))


class FeatureStats:
    """Accumulates feature firing counts and reconstruction sums over many batches."""

    def __init__(self, d_in: int, d_sae: int, eps: float, device):
        z = lambda *s, dt=torch.float64: torch.zeros(*s, dtype=dt, device=device)  # noqa: E731
        self.eps = eps
        self.fire_F = z(d_sae)
        self.max_act_F = z(d_sae, dt=torch.float32)
        self.sum_x_D, self.sum_x2_D = z(d_in), z(d_in)
        self.sse = self.l0 = self.l1 = self.l0approx = self.legacy = 0.0
        self.n = self.n_batches = 0

    @torch.no_grad()
    def update(self, x_BD: torch.Tensor, f_BF: torch.Tensor, x_hat_BD: torch.Tensor) -> None:
        # per-feature sums over the batch as BLAS mat-vecs (kernels.colsum); firing counts are exact,
        # the other sums accumulate in float64 across batches
        fired_F = firing_counts(f_BF)
        self.fire_F += fired_F.double()
        torch.maximum(self.max_act_F, torch.amax(f_BF, 0), out=self.max_act_F)
        self.sum_x_D += x_BD.sum(0).double()
        self.sum_x2_D += x_BD.double().pow(2).sum(0)
        self.sse += float((x_hat_BD - x_BD).double().pow(2).sum())
        self.l0 += float(fired_F.double().sum())
        self.l1 += float(colsum(f_BF).double().sum())
        self.l0approx += float(colsum(f_BF / (f_BF + self.eps)).double().sum())
        self.legacy += float(legacy_mse(x_hat_BD, x_BD))  # batch-level definition: averaged over batches
        self.n += x_BD.shape[0]
        self.n_batches += 1

    def sparsity(self) -> torch.Tensor:
        """s_f: fraction of evaluation tokens on which each feature fires."""
        return (self.fire_F / max(self.n, 1)).float()

    def summary(self, high_density: tuple[float, ...] = (0.1, 0.2)) -> dict[str, float]:
        s = self.sparsity()
        n, d = max(self.n, 1), self.sum_x_D.numel()
        var = float((self.sum_x2_D - self.sum_x_D.pow(2) / n).sum())
        dead = int((self.fire_F == 0).sum())
        out = {
            "tokens": self.n,
            "l0": self.l0 / n, "l1": self.l1 / n, "l0approx": self.l0approx / n,
            "mse_legacy": self.legacy / max(self.n_batches, 1), "mse": self.sse / (n * d),
            "fvu": self.sse / var if var > 0 else math.nan,
            "dead": dead, "dead_pct": 100.0 * dead / s.numel(),
        }
        for t in high_density:
            out[f"dense_gt_{t:g}"] = int((s > t).sum())
        return out
