"""Statistics behind the verdicts: the power-law fit of the feature-sparsity distribution (Figure 6), chance
baselines for feature matching (Figure 11), and seed-based intervals for comparisons between configurations
(Tables 2 and 3), each stated as holds / does not hold / cannot tell.

The power law follows the standard method (Clauset, Shalizi & Newman 2009) through the maintained `powerlaw`
package: maximum likelihood for the exponent, the lower cut-off chosen by the Kolmogorov-Smirnov distance, and
likelihood-ratio tests against a lognormal and an exponential. A density p(s) ~ s^-alpha has counts per
logarithmic bin ~ s^(1 - alpha): the slope of the post's log-log histogram is 1 - alpha.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np
from scipy import stats as sps

from .metrics import DEAD_LOG10

# ---- Figure 6: histogram of log10(s_f) (a drawing aid) ----------------------------------------------------


def log10_bins(bin_width: float = 0.2, lo: float = DEAD_LOG10, hi: float = 0.0) -> np.ndarray:
    """Bin edges on the log10(s_f) axis, aligned to multiples of bin_width; the dead value -10 gets a bin."""
    n = round((hi - lo) / bin_width)
    return lo - bin_width / 2 + bin_width * np.arange(n + 2)


class HistogramLine(NamedTuple):
    slope: float
    """d log10(count per bin) / d log10(s_f)."""
    intercept: float
    """log10(count per bin) at log10(s_f) = 0."""
    lo: float
    hi: float
    n_bins: int
    """Non-empty bins in [lo, hi] (the points of the least-squares line)."""


def histogram_line(log10_s: np.ndarray, lo: float, hi: float, bin_width: float = 0.2) -> HistogramLine:
    """Least-squares line through (bin centre, log10 count) of the log10(s_f) histogram over [lo, hi]: how the
    fitted power law is drawn on the histogram, not how it is estimated (`power_law`)."""
    counts, edges = np.histogram(np.asarray(log10_s), bins=log10_bins(bin_width))
    centres = (edges[:-1] + edges[1:]) / 2
    keep = (centres >= lo - 1e-9) & (centres <= hi + 1e-9) & (counts > 0)
    if keep.sum() < 2:
        raise ValueError(f"fewer than 2 non-empty bins in log10(s_f) range [{lo}, {hi}]: widen the range")
    slope, intercept = np.polyfit(centres[keep], np.log10(counts[keep]), 1)
    return HistogramLine(float(slope), float(intercept), lo, hi, int(keep.sum()))


# ---- Figure 6: the power law, estimated ----------------------------------------------------------------------


class PowerLaw(NamedTuple):
    alpha: float
    """Exponent of the density p(s) ~ s^-alpha (maximum likelihood)."""
    slope: float
    """1 - alpha: the slope of log10(count per log bin) against log10(s), the post's number (about -0.9)."""
    slope_ci: tuple[float, float]
    """95% bootstrap interval of the slope (features resampled, cut-off re-chosen each time)."""
    xmin: float
    """Lower cut-off chosen by the KS distance; the fit covers [xmin, xmax]."""
    xmax: float
    n_tail: int
    """Features in [xmin, xmax]."""
    ks: float
    vs_lognormal: tuple[float, float]
    """Normalised log-likelihood ratio R (> 0 favours the power law) and its p-value."""
    vs_exponential: tuple[float, float]

    def verdict(self, alternative: str = "lognormal", alpha: float = 0.1) -> str:
        R, p = self.vs_lognormal if alternative == "lognormal" else self.vs_exponential
        if p >= alpha:
            return f"cannot tell a power law from a {alternative} (R = {R:.2f}, p = {p:.2g})"
        return (f"power law favoured over a {alternative} (R = {R:.2f}, p = {p:.2g})" if R > 0 else
                f"{alternative} favoured over a power law (R = {R:.2f}, p = {p:.2g})")

    def __str__(self) -> str:
        lo, hi = self.slope_ci
        return (f"slope {self.slope:.2f} (95% bootstrap interval {lo:.2f} to {hi:.2f}; alpha = {self.alpha:.2f}) over "
                f"s_f in [{self.xmin:.3g}, {self.xmax:.3g}] ({self.n_tail} features, cut-off by KS distance "
                f"{self.ks:.3f}); {self.verdict('lognormal')}; {self.verdict('exponential')}")


def _fit(s: np.ndarray):
    import powerlaw

    # no `xmax` argument: with it, powerlaw 2.0 leaves the lognormal unrenormalised and its likelihood-ratio test
    # favours a power law on lognormal data (tests/test_stats.py); the values above xmax are removed instead
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return powerlaw.Fit(s, verbose=False)


def power_law(s_F: np.ndarray, xmax: float = 0.1, min_fires: int = 10, eval_tokens: int | None = None,
              n_boot: int = 200, seed: int = 0) -> PowerLaw:
    """Fit p(s) ~ s^-alpha to the alive features' s_f up to `xmax` (the high-density features above it are
    left out). With `eval_tokens`, values below `min_fires` firings are left out too (too coarsely quantised
    to be continuous). The bootstrap resamples features and re-chooses the cut-off each time."""
    s = np.asarray(s_F, dtype=np.float64)
    floor = min_fires / eval_tokens if eval_tokens else 0.0
    s = s[(s > max(floor, 0.0)) & (s <= xmax)]
    if len(s) < 20:
        raise ValueError(f"only {len(s)} features with s_f in ({floor:.3g}, {xmax}]: too few for a power-law fit")
    fit = _fit(s)
    alpha, xmin = float(fit.power_law.alpha), float(fit.xmin)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        ln = fit.distribution_compare("power_law", "lognormal", normalized_ratio=True)
        ex = fit.distribution_compare("power_law", "exponential", normalized_ratio=True)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        b = _fit(rng.choice(s, size=len(s), replace=True))
        if math.isfinite(b.power_law.alpha):
            boots.append(1 - float(b.power_law.alpha))
    lo, hi = (np.percentile(boots, [2.5, 97.5]) if boots else (math.nan, math.nan))
    return PowerLaw(alpha, 1 - alpha, (float(lo), float(hi)), xmin, xmax, int(((s >= xmin) & (s <= xmax)).sum()),
                    float(fit.power_law.D), (float(ln[0]), float(ln[1])), (float(ex[0]), float(ex[1])))


# ---- Figure 11: feature matching against chance ---------------------------------------------------------------


def random_unit_rows(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def random_rotation(d: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random orthogonal matrix (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def best_cos(A: np.ndarray, B: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Each row of A's best cosine similarity among B's rows."""
    A = A / np.linalg.norm(A, axis=1, keepdims=True)
    B = B / np.linalg.norm(B, axis=1, keepdims=True)
    return np.concatenate([(A[i:i + chunk] @ B.T).max(1) for i in range(0, len(A), chunk)])


def matching_nulls(A: np.ndarray, B: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Best cosine of A's rows under two nulls of the same shapes: B replaced by random unit vectors, and B
    randomly rotated (which keeps B's own geometry: its rows' mutual angles)."""
    rng = np.random.default_rng([seed, 0x5AE])  # a stream of its own (not that of a caller's default_rng(seed))
    return {"random unit vectors": best_cos(A, random_unit_rows(len(B), B.shape[1], rng)),
            "B randomly rotated": best_cos(A, B @ random_rotation(B.shape[1], rng))}


# ---- comparisons between configurations, from their seeds ------------------------------------------------


class Comparison(NamedTuple):
    diff: float
    """mean(A) - mean(B)."""
    ci: tuple[float, float]
    """95% interval of the difference (Welch; NaN with a single seed on either side)."""
    n_a: int
    n_b: int
    verdict: str
    """`holds` (A better, interval excludes no difference), `does not hold` (B better, likewise), or
    `cannot tell at this noise`."""


def compare(a: list[float] | np.ndarray, b: list[float] | np.ndarray, lower_is_better: bool = True,
            level: float = 0.95) -> Comparison:
    """Is A better than B? From each side's values over seeds: the difference of the means with a Welch
    t-interval. With 2 seeds per side the interval is wide (t with ~2 degrees of freedom): only large
    differences come out as `holds` or `does not hold`."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return Comparison(diff, (math.nan, math.nan), len(a), len(b), "cannot tell at this noise (one seed)")
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        lo = hi = diff
    else:
        df = (va + vb) ** 2 / ((va ** 2 / (len(a) - 1) if va else 0) + (vb ** 2 / (len(b) - 1) if vb else 0) or 1e-300)
        t = sps.t.ppf(0.5 + level / 2, max(df, 1.0))
        lo, hi = diff - t * se, diff + t * se
    better = hi < 0 if lower_is_better else lo > 0
    worse = lo > 0 if lower_is_better else hi < 0
    verdict = "holds" if better else "does not hold" if worse else "cannot tell at this noise"
    return Comparison(diff, (float(lo), float(hi)), len(a), len(b), verdict)
