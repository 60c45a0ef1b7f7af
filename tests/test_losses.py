"""Values and gradients of every loss term on hand-derived cases (SPEC "Definitions")."""

import math

import pytest
import torch
from torch.testing import assert_close

from saelib.config import RunConfig
from saelib.losses import (freq_penalty, ghost_loss, l0approx, l1, legacy_mse, log10_straight_through, measure,
                           measure_derivative, s_hat, sae_loss, straight_through)
from saelib.sae import SAE
from saelib.sparsity import SparsityTracker


def test_l0approx_value_and_gradient():
    f = torch.tensor([[0.0, 0.2], [0.6, 0.0]], requires_grad=True)
    v = l0approx(f, eps=0.2)
    # rows: 0 + 0.2/0.4 = 0.5 and 0.6/0.8 + 0 = 0.75; mean 0.625
    assert_close(v, torch.tensor(0.625))
    v.backward()
    # d/da a/(a+eps) = eps/(a+eps)^2, divided by n_b = 2
    assert_close(f.grad, torch.tensor([[0.2 / 0.04 / 2, 0.2 / 0.16 / 2], [0.2 / 0.64 / 2, 0.2 / 0.04 / 2]]))


def test_l1_and_s_hat():
    f = torch.tensor([[0.0, 0.2], [0.6, 0.0]], requires_grad=True)
    assert_close(l1(f), torch.tensor(0.4))
    assert_close(s_hat(f, 0.2), torch.tensor([0.375, 0.25]))


@pytest.mark.parametrize("name", ["l1", "tanh", "l0approx"])
def test_measure_derivative_matches_autograd(name):
    a = torch.linspace(0.01, 3, 50, dtype=torch.float64, requires_grad=True)
    measure(name, a, 0.1).sum().backward()
    assert_close(measure_derivative(name, a.detach(), 0.1), a.grad)


def test_measure_l0_is_indicator():
    a = torch.tensor([0.0, 1e-6, 2.0])
    assert measure("l0", a).tolist() == [0.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="valid"):
        measure("l2", a)


def test_legacy_mse_divides_by_centered_row_norm():
    x = torch.tensor([[3.0, 4.0], [-3.0, -4.0]])  # batch mean 0, row norms 5
    x_hat = torch.tensor([[3.0, 3.0], [-3.0, -4.0]])
    assert_close(legacy_mse(x_hat, x), torch.tensor(1.0 / 5 / 4))


def test_freq_penalty_value_zero_above_s_min():
    s = torch.tensor([1e-6, 1e-5, 1e-4, 0.3], requires_grad=True)
    # only the first is below s_min = 1e-5: log10(1e-5) - log10(1e-6) = 1
    p = freq_penalty(torch.log10(s), 1e-5)
    assert_close(p, torch.tensor(1.0))
    p.backward()
    assert s.grad[1:].abs().sum() == 0  # no gradient at or above s_min
    assert_close(s.grad[0], torch.tensor(-1 / (1e-6 * math.log(10))))


def test_straight_through_value_is_rolling_gradient_is_s_hat():
    s_hat_F = torch.tensor([0.01, 0.02], requires_grad=True)
    r_F = torch.tensor([1e-6, 1e-4])
    p = freq_penalty(log10_straight_through(s_hat_F, r_F), 1e-5)
    assert_close(p, torch.tensor(1.0))  # the value uses the rolling estimate r, not s_hat
    p.backward()
    # d/ds_hat of -log10(s_eff) at value r: -1 / (r ln 10); zero for the feature above s_min
    assert_close(s_hat_F.grad, torch.tensor([-1 / (1e-6 * math.log(10)), 0.0]))


def test_log10_straight_through_equals_spec_form_in_float64():
    s_hat_F = torch.tensor([0.01, 0.5, 1e-3], dtype=torch.float64, requires_grad=True)
    r_F = torch.tensor([1e-6, 2e-5, 1e-3], dtype=torch.float64)
    a = log10_straight_through(s_hat_F, r_F)
    b = torch.log10(straight_through(s_hat_F, r_F))
    assert_close(a, b)
    ga, = torch.autograd.grad(a.sum(), s_hat_F)
    gb, = torch.autograd.grad(b.sum(), s_hat_F)
    assert_close(ga, gb)
    assert_close(straight_through(s_hat_F, r_F), r_F)


def test_sae_loss_assembles_named_terms():
    run = RunConfig(lambda_sparsity=1e-2, lambda_min=1e-3, s_min=0.3, eps=0.2)
    sae = SAE(4, 8)
    x = torch.randn(16, 4)
    tracker = SparsityTracker(8, window=3)
    out = sae(x)
    t = sae_loss(run, sae, x, out, tracker)
    assert_close(t.mse, legacy_mse(out.x_hat_BD, x))
    assert_close(t.sparsity, l0approx(out.f_BF, 0.2))
    r = ((out.f_BF > 0).float().mean(0)).clamp_min(1e-10)
    assert_close(t.freq, freq_penalty(torch.log10(r), 0.3))
    assert_close(t.total, t.mse + 1e-2 * t.sparsity + 1e-3 * t.freq)
    assert t.ghost == 0


def test_sae_loss_l1_and_tanh_terms():
    sae = SAE(4, 8)
    x = torch.randn(16, 4)
    out = sae(x)
    t = sae_loss(RunConfig(sparsity="l1", lambda_min=0.0), sae, x, out, SparsityTracker(8, 3))
    assert_close(t.sparsity, out.f_BF.sum(-1).mean())
    assert t.freq == 0
    t = sae_loss(RunConfig(sparsity="tanh", lambda_min=0.0), sae, x, out, SparsityTracker(8, 3))
    assert_close(t.sparsity, torch.tanh(out.f_BF).sum(-1).mean())


@pytest.mark.parametrize("pre_encoder_bias", [False, True])
def test_ghost_gradients_act_only_on_dead_features(pre_encoder_bias):
    sae = SAE(6, 10, pre_encoder_bias=pre_encoder_bias)
    x = torch.randn(32, 6)
    dead = torch.zeros(10, dtype=torch.bool)
    dead[[2, 7]] = True
    out = sae(x)
    mse = legacy_mse(out.x_hat_BD, x)
    g = ghost_loss(x, out, sae, dead, mse)
    assert g > 0
    # rescaled to the size of the real MSE
    assert_close(g, mse.detach(), rtol=1e-4, atol=1e-6)
    g.backward()
    live = ~dead
    assert sae.W_enc.grad[:, live].abs().sum() == 0
    assert sae.b_enc.grad[live].abs().sum() == 0
    assert sae.W_dec.grad[live].abs().sum() == 0
    assert sae.b_dec.grad is None or sae.b_dec.grad.abs().sum() == 0
    assert sae.W_enc.grad[:, dead].abs().sum() > 0
    assert sae.W_dec.grad[dead].abs().sum() > 0


def test_ghost_term_only_when_features_are_dead():
    run = RunConfig(sparsity="l1", lambda_min=0.0, ghost=True, dead_window=2)
    sae = SAE(4, 8)
    with torch.no_grad():
        sae.b_enc[3] = -1e3  # feature 3 never fires
    x = torch.randn(16, 4)
    tracker = SparsityTracker(8, window=5)
    assert sae_loss(run, sae, x, sae(x), tracker).ghost == 0  # dead for 1 step: not yet dead
    t = sae_loss(run, sae, x, sae(x), tracker)  # dead for 2 steps
    assert t.ghost > 0
    assert tracker.dead_mask(2).tolist() == [i == 3 for i in range(8)]


@pytest.mark.parametrize("B,F", [(1, 3), (16, 8), (33, 70)])
@pytest.mark.parametrize("rolling_source", ["firing", "s_hat"])
def test_fused_kernel_matches_plain_autograd(B, F, rolling_source):
    """The fused ReLU + a/(a+eps) path gives the same terms and gradients as plain autograd."""
    from saelib.kernels import relu_ratio

    run = RunConfig(lambda_sparsity=1e-2, lambda_min=1e-3, s_min=0.2, rolling_source=rolling_source)
    torch.manual_seed(B * F)
    sae = SAE(5, F, pre_encoder_bias=True)
    x = torch.randn(B, 5, dtype=torch.float64)
    sae = sae.double()
    grads, terms = [], []
    for eps in (None, run.eps):
        sae.zero_grad()
        t = sae_loss(run, sae, x, sae(x, eps=eps), SparsityTracker(F, 3, "cpu"))
        t.total.backward()
        terms.append(t)
        grads.append([p.grad.clone() for p in sae.parameters()])
    for a, b in zip(terms[0], terms[1]):
        assert_close(a, b)
    for a, b in zip(*grads):
        assert_close(a, b)
    pre = torch.randn(B, F, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda p: relu_ratio(p, 0.2), (pre,))
