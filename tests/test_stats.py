"""saelib.stats: the power-law fit (the `powerlaw` package's standard method) on samples of known law, the chance
baselines of feature matching, and the seed-based comparison."""

import numpy as np
import pytest

from saelib import stats
from saelib.metrics import DEAD_LOG10


def power_law_sample(alpha, lo, hi, n, seed=0):
    u = np.random.default_rng(seed).random(n)
    a = 1 - alpha
    return (lo ** a + u * (hi ** a - lo ** a)) ** (1 / a)


def test_power_law_recovers_a_known_exponent_and_slope():
    s = power_law_sample(1.9, 1e-4, 0.1, 4000)
    fit = stats.power_law(np.concatenate([s, np.zeros(50), np.full(30, 0.5)]), xmax=0.1, n_boot=50)
    assert fit.alpha == pytest.approx(1.9, abs=0.08)
    assert fit.slope == pytest.approx(-0.9, abs=0.08) and fit.slope_ci[0] < fit.slope < fit.slope_ci[1]
    assert fit.vs_exponential[0] > 0 and fit.vs_exponential[1] < 0.01  # clearly not exponential
    assert "slope" in str(fit) and "bootstrap" in str(fit)


def test_a_lognormal_is_not_called_a_power_law():
    """The reason `xmax` is not passed to powerlaw 2.0: with it, this lognormal sample came out as a power law."""
    s = 10 ** np.random.default_rng(1).normal(-2.5, 0.7, 6000)
    fit = stats.power_law(s[s <= 0.1], xmax=0.1, n_boot=10)
    assert not fit.verdict("lognormal").startswith("power law favoured")


def test_power_law_needs_features_in_range():
    with pytest.raises(ValueError, match="too few"):
        stats.power_law(np.full(10, 0.5), xmax=0.1)


def test_histogram_line_recovers_a_known_slope():
    # counts per log bin ~ s^(1 - alpha)
    s = power_law_sample(1.9, 1e-5, 1e-1, 200_000)
    line = stats.histogram_line(np.log10(s), -4.6, -1.4)
    assert line.slope == pytest.approx(-0.9, abs=0.03)


def test_log10_bins_put_dead_features_in_their_own_bin():
    edges = stats.log10_bins(0.2)
    counts, _ = np.histogram([DEAD_LOG10, DEAD_LOG10, -9.8, 0.0], bins=edges)
    assert counts[0] == 2 and counts[1] == 1 and counts[-1] == 1


def test_matching_nulls_of_random_directions_in_128_dimensions():
    """The issue's numbers: 1024 random unit vectors against 1024 in 128 dimensions have a median best cosine of
    about 0.28, and essentially none above 0.7."""
    rng = np.random.default_rng(0)
    A, B = stats.random_unit_rows(1024, 128, rng), stats.random_unit_rows(1024, 128, rng)
    nulls = stats.matching_nulls(A, B)
    for v in nulls.values():
        assert 0.24 < np.median(v) < 0.34 and (v > 0.7).mean() < 0.001
    Q = stats.random_rotation(16, rng)
    np.testing.assert_allclose(Q @ Q.T, np.eye(16), atol=1e-10)
    assert np.allclose(stats.best_cos(A[:5], A), 1.0)


def test_compare_with_two_seeds():
    assert stats.compare([1.0, 1.1], [5.0, 5.2]).verdict == "holds"
    assert stats.compare([5.0, 5.2], [1.0, 1.1]).verdict == "does not hold"
    assert stats.compare([1.0, 5.0], [2.0, 6.0]).verdict == "cannot tell at this noise"
    assert stats.compare([1.0], [2.0]).verdict.startswith("cannot tell")
    c = stats.compare([2.0, 2.0], [1.0, 1.0], lower_is_better=False)
    assert c.verdict == "holds" and c.ci == (1.0, 1.0)
