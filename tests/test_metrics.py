"""Metrics: FeatureStats accumulated over batches equals the same quantities computed on all tokens at once, for a
stack of SAEs; the training log's batch metrics agree with it on one batch."""

import pytest
import torch

from saelib.config import RunConfig, TrainConfig
from saelib.metrics import FeatureStats, log10_sparsity
from saelib.stack import SAEStack


def test_feature_stats_over_batches_equal_direct_computation():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 8, generator=g) * 3
    f = torch.relu(torch.randn(2, 300, 32, generator=g) - 1.0)
    f[:, :, 5] = 0.0  # a dead feature
    x_hat = x + 0.1 * torch.randn(2, 300, 8, generator=g)
    center = x.mean(0)
    st = FeatureStats(2, 8, 32, torch.tensor([0.2, 0.5]).view(2, 1, 1), "cpu")
    for i in range(0, 300, 128):  # uneven last batch
        st.update(x[i:i + 128], f[:, i:i + 128], x_hat[:, i:i + 128], center)
    s = st.sparsity()
    assert torch.equal(s, ((f > 0).sum(1) / 300).float())
    assert torch.equal(st.max_act_RF, f.max(1).values)
    for r, eps in enumerate((0.2, 0.5)):
        out = st.summary(r)
        fr, xr = f[r].double(), x_hat[r].double()
        assert out["tokens"] == 300 and out["dead"] == 1 and out["dead_pct"] == pytest.approx(100 / 32)
        assert out["l0"] == pytest.approx(float((fr > 0).sum()) / 300, rel=1e-12)
        assert out["l1"] == pytest.approx(float(fr.sum()) / 300, rel=1e-6)
        assert out["l0approx"] == pytest.approx(float((fr / (fr + eps)).sum()) / 300, rel=1e-6)
        err = (xr - x.double()).pow(2)
        assert out["mse"] == pytest.approx(float(err.sum()) / (300 * 8), rel=1e-9)
        assert out["fvu"] == pytest.approx(float(err.sum() / (x.double() - x.double().mean(0)).pow(2).sum()), rel=1e-6)
        # the legacy MSE is centred on the whole set's mean: independent of how the set is cut into batches
        norm = (x.double() - center.double()).norm(dim=1, keepdim=True)
        assert out["mse_legacy"] == pytest.approx(float((err / norm).mean()), rel=1e-6)
        assert out["dense_gt_0.1"] == int((s[r] > 0.1).sum())


def test_training_batch_metrics_agree_with_the_evaluation_ones():
    runs = [RunConfig(expansion=4, eps=0.2), RunConfig(expansion=4, sparsity="l1", eps=0.5)]
    stack = SAEStack(["a", "b"], runs, 8, TrainConfig(batch_tokens=64))
    x = torch.randn(64, 8) * 3
    out = stack(x)
    bm = stack.batch_metrics(x, out)
    st = FeatureStats(2, 8, 32, stack.eps_R11, "cpu")
    st.update(x, out.f_RBF.detach(), out.x_hat_RBD.detach(), x.mean(0))
    for r in range(2):
        for k in ("l0", "l1", "l0approx", "mse", "fvu", "mse_legacy"):
            assert float(bm[k][r]) == pytest.approx(st.summary(r)[k], rel=1e-5), k


def test_log10_sparsity_puts_dead_features_at_minus_ten():
    assert log10_sparsity(torch.tensor([0.0, 1e-3, 1.0])).tolist() == pytest.approx([-10.0, -3.0, 0.0])
