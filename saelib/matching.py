"""Feature matching between two SAEs (SPEC "Beyond the post"): for every decoder row of SAE A, its best
cosine similarity among the decoder rows of SAE B, and the fractions of A's features matched above 0.9, 0.8
and 0.7.

The similarity matrix of two paper-sized SAEs is 24576 x 24576 (2.4 GB in float32), so it is never built:
A's rows go through in chunks of `chunk_a`, and optionally B's in chunks of `chunk_b`, keeping only the
running best of each A row. Everything runs on the device of A's decoder.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pandas as pd
import torch

from .sae import SAE

if TYPE_CHECKING:
    from .study import Study

THRESHOLDS = (0.9, 0.8, 0.7)


class MatchResult(NamedTuple):
    best_cos_A: torch.Tensor  # (F_A,) best cosine similarity of each A feature among B's features
    best_idx_A: torch.Tensor  # (F_A,) index in B of that best match (int64)


def _unit_rows(W_FD: torch.Tensor) -> torch.Tensor:
    # decoder rows are unit norm after training already; released SAEs may be slightly off
    return W_FD / W_FD.norm(dim=1, keepdim=True).clamp_min(1e-12)


@torch.no_grad()
def best_match(W_dec_AD: torch.Tensor, W_dec_BD: torch.Tensor, chunk_a: int = 1024,
               chunk_b: int | None = None) -> MatchResult:
    """Best cosine similarity in B for each row of A, never holding more than a (chunk_a, chunk_b) block.

    Cosine similarity is signed: a row and its negation (cos = -1) are not a match.
    `chunk_b=None` takes all of B at once (a (chunk_a, F_B) block: 100 MB for 1024 x 24576 in float32).
    Ties keep the lowest index in B.
    """
    if W_dec_AD.ndim != 2 or W_dec_BD.ndim != 2 or W_dec_AD.shape[1] != W_dec_BD.shape[1]:
        raise ValueError(f"decoders must be (features, d_in) with the same d_in; got {tuple(W_dec_AD.shape)} "
                         f"and {tuple(W_dec_BD.shape)}")
    if chunk_a < 1 or (chunk_b is not None and chunk_b < 1):
        raise ValueError(f"chunk sizes must be positive, got chunk_a={chunk_a}, chunk_b={chunk_b}")
    device = W_dec_AD.device
    B_FD = _unit_rows(W_dec_BD.to(device=device, dtype=W_dec_AD.dtype))
    n_a, n_b = W_dec_AD.shape[0], B_FD.shape[0]
    chunk_b = n_b if chunk_b is None else chunk_b
    best_cos = torch.empty(n_a, dtype=W_dec_AD.dtype, device=device)
    best_idx = torch.empty(n_a, dtype=torch.long, device=device)
    for a0 in range(0, n_a, chunk_a):
        A_cD = _unit_rows(W_dec_AD[a0:a0 + chunk_a])
        run_cos = torch.full((A_cD.shape[0],), -torch.inf, dtype=A_cD.dtype, device=device)
        run_idx = torch.zeros(A_cD.shape[0], dtype=torch.long, device=device)
        for b0 in range(0, n_b, chunk_b):
            cos_cb = A_cD @ B_FD[b0:b0 + chunk_b].T  # (chunk_a, chunk_b)
            cos_c, idx_c = cos_cb.max(dim=1)
            better = cos_c > run_cos  # strict: an equal later match does not replace an earlier one
            run_cos = torch.where(better, cos_c, run_cos)
            run_idx = torch.where(better, idx_c + b0, run_idx)
        best_cos[a0:a0 + chunk_a] = run_cos
        best_idx[a0:a0 + chunk_a] = run_idx
    return MatchResult(best_cos, best_idx)


def match_saes(sae_a: SAE, sae_b: SAE, chunk_a: int = 1024, chunk_b: int | None = None) -> MatchResult:
    """`best_match` on the decoders of two SAEs (A's features looked up in B)."""
    return best_match(sae_a.W_dec.detach(), sae_b.W_dec.detach(), chunk_a, chunk_b)


def match_summary(best_cos_A: torch.Tensor, thresholds: tuple[float, ...] = THRESHOLDS) -> dict[str, float]:
    """Fractions of A's features whose best match in B has cosine similarity above each threshold,
    as {"frac_gt_0.9": ..., ...}, plus the mean and median best similarity."""
    c = best_cos_A.detach().float().cpu()
    out = {f"frac_gt_{t:g}": float((c > t).float().mean()) for t in thresholds}
    out["mean_best_cos"] = float(c.mean())
    out["median_best_cos"] = float(c.median())
    out["n_features"] = int(c.numel())
    return out


def matching_pairs(study: Study) -> dict[str, tuple[str, str]]:
    """The comparisons of SPEC "Beyond the post", name -> (run A, run B): the highlighted run against the
    reference, and each of them against its own configuration with another seed (when there is one)."""
    new, ref = study.highlight, study.reference
    pairs = {"new vs reference": (new, ref)}
    if study.other_seed(ref):
        pairs["reference vs reference, other seed"] = (ref, study.other_seed(ref))
    if study.other_seed(new):
        pairs["new vs new, other seed"] = (new, study.other_seed(new))
    return pairs


def feature_matching(study: Study, pairs: dict[str, tuple[str, str]], alive_only: bool = True
                     ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """For each pair (A, B): every decoder row of A and its best cosine similarity among B's decoder rows.
    Returns (one row per A feature: pair, a, b, feature, best_cos; one row per pair: match_summary's fractions
    above 0.9/0.8/0.7, mean and median). `alive_only` leaves out A's features dead on held-out tokens (their
    decoder rows never moved from the initialisation)."""
    from .evaluate import load_trained
    from .study import sparsity_of

    rows, summary = [], {}
    for name, (a, b) in pairs.items():
        best = match_saes(load_trained(study.cfg, a, "cpu"), load_trained(study.cfg, b, "cpu")).best_cos_A
        keep = np.ones(best.numel(), dtype=bool)
        if alive_only:
            keep = sparsity_of(study, a) > 0
        best = best[torch.from_numpy(np.asarray(keep, dtype=bool))]
        rows.append(pd.DataFrame({"pair": name, "a": study.labels[a], "b": study.labels[b], "a_run": a, "b_run": b,
                                  "feature": np.flatnonzero(keep), "best_cos": best.numpy()}))
        summary[name] = {"a_run": a, "b_run": b} | match_summary(best)
    return pd.concat(rows, ignore_index=True), pd.DataFrame.from_dict(summary, orient="index").rename_axis("pair")
