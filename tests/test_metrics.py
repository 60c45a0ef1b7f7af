"""Metrics: FeatureStats accumulated over batches equals the same quantities computed on all tokens at once."""

import pytest
import torch

from saelib.metrics import FeatureStats, batch_metrics, log10_sparsity


def test_feature_stats_over_batches_equal_direct_computation():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 8, generator=g) * 3
    f = torch.relu(torch.randn(300, 32, generator=g) - 1.0)
    f[:, 5] = 0.0  # a dead feature
    x_hat = x + 0.1 * torch.randn(300, 8, generator=g)
    st = FeatureStats(8, 32, 0.2, "cpu")
    for i in range(0, 300, 128):  # uneven last batch
        st.update(x[i:i + 128], f[i:i + 128], x_hat[i:i + 128])
    s = st.sparsity()
    assert torch.equal(s, ((f > 0).sum(0) / 300).float())
    assert torch.equal(st.max_act_F, f.max(0).values)
    out = st.summary()
    assert out["tokens"] == 300 and out["dead"] == 1 and out["dead_pct"] == pytest.approx(100 / 32)
    assert out["l0"] == pytest.approx(float((f > 0).sum()) / 300, rel=1e-12)
    assert out["l1"] == pytest.approx(float(f.double().sum()) / 300, rel=1e-6)
    assert out["l0approx"] == pytest.approx(float((f / (f + 0.2)).double().sum()) / 300, rel=1e-6)
    err = (x_hat - x).double().pow(2).sum()
    assert out["mse"] == pytest.approx(float(err) / (300 * 8), rel=1e-9)
    assert out["fvu"] == pytest.approx(float(err / (x.double() - x.double().mean(0)).pow(2).sum()), rel=1e-6)
    assert out["dense_gt_0.1"] == int((s > 0.1).sum())
    # the training log's per-batch metrics agree with the accumulated ones on a single batch
    one = FeatureStats(8, 32, 0.2, "cpu")
    one.update(x, f, x_hat)
    bm = batch_metrics(x, f, x_hat, 0.2)
    for k in ("l0", "l1", "l0approx", "mse", "fvu", "mse_legacy"):
        assert bm[k] == pytest.approx(one.summary()[k], rel=1e-5), k


def test_log10_sparsity_puts_dead_features_at_minus_ten():
    assert log10_sparsity(torch.tensor([0.0, 1e-3, 1.0])).tolist() == pytest.approx([-10.0, -3.0, 0.0])
