"""Values and gradients of every loss term on hand-derived cases (SPEC "Definitions")."""

import math

import pytest
import torch
from torch.testing import assert_close

from saelib.kernels import colsum, firing_counts, relu_ratio, use_compile
from saelib.losses import (
    freq_penalty,
    ghost_loss,
    l0,
    l0approx,
    l1,
    legacy_mse,
    log10_straight_through,
    measure,
    measure_derivative,
    ratio,
    ratio_colsum,
    s_hat,
    sae_loss,
    straight_through,
)


def test_l0approx_value_and_gradient():
    f = torch.tensor([[0.0, 0.2], [0.6, 0.0]], requires_grad=True)
    v = l0approx(ratio_colsum(f, 0.2), 2)
    # rows: 0 + 0.2/0.4 = 0.5 and 0.6/0.8 + 0 = 0.75; mean 0.625
    assert_close(v, torch.tensor(0.625))
    v.backward()
    # d/da a/(a+eps) = eps/(a+eps)^2, divided by n_b = 2
    assert_close(f.grad, torch.tensor([[0.2 / 0.04 / 2, 0.2 / 0.16 / 2], [0.2 / 0.64 / 2, 0.2 / 0.04 / 2]]))


def test_l1_l0_and_s_hat():
    f = torch.tensor([[0.0, 0.2], [0.6, 0.0]])
    assert_close(l1(colsum(f), 2), torch.tensor(0.4))
    assert_close(l0(firing_counts(f), 2), torch.tensor(1.0))
    assert_close(s_hat(ratio_colsum(f, 0.2), 2), torch.tensor([0.375, 0.25]))


def test_stacked_terms_give_one_value_per_run():
    f = torch.rand(3, 5, 4)
    assert_close(l1(colsum(f), 5), torch.stack([l1(colsum(f[i]), 5) for i in range(3)]))
    x, x_hat = torch.randn(5, 2), torch.randn(3, 5, 2)
    assert_close(legacy_mse(x_hat, x), torch.stack([legacy_mse(x_hat[i], x) for i in range(3)]))


@pytest.mark.parametrize("name", ["l1", "tanh", "l0approx"])
def test_measure_derivative_matches_autograd(name):
    a = torch.linspace(0.01, 3, 50, dtype=torch.float64, requires_grad=True)
    measure(name, a, 0.1).sum().backward()
    assert_close(measure_derivative(name, a.detach(), 0.1), a.grad)


def test_measure_l0_is_indicator():
    a = torch.tensor([0.0, 1e-6, 2.0])
    assert measure("l0", a).tolist() == [0.0, 1.0, 1.0]
    assert_close(measure("l0approx", a, 0.5), ratio(a, 0.5))
    with pytest.raises(ValueError, match="valid"):
        measure("l2", a)


def test_legacy_mse_divides_by_centered_row_norm():
    x = torch.tensor([[3.0, 4.0], [-3.0, -4.0]])  # batch mean 0, row norms 5
    x_hat = torch.tensor([[3.0, 3.0], [-3.0, -4.0]])
    assert_close(legacy_mse(x_hat, x), torch.tensor(1.0 / 5 / 4))
    # centred on a given mean (the evaluation set's): rows x - (1, 0) have norms sqrt(4 + 16) and sqrt(16 + 16)
    want = (1.0 / math.sqrt(20) + 0.0) / 4
    assert_close(legacy_mse(x_hat, x, torch.tensor([1.0, 0.0])), torch.tensor(want))


def test_freq_penalty_value_zero_above_s_min():
    s = torch.tensor([1e-6, 1e-5, 1e-4, 0.3], requires_grad=True)
    # only the first is below s_min = 1e-5: log10(1e-5) - log10(1e-6) = 1
    p = freq_penalty(torch.log10(s), 1e-5)
    assert_close(p, torch.tensor(1.0))
    p.backward()
    assert s.grad[1:].abs().sum() == 0  # no gradient at or above s_min
    assert_close(s.grad[0], torch.tensor(-1 / (1e-6 * math.log(10))))
    # per-run s_min for a stack: (R, 1) against (R, F)
    two = freq_penalty(torch.log10(torch.tensor([[1e-6, 1.0], [1e-6, 1.0]])), torch.tensor([[1e-5], [1e-4]]))
    assert_close(two, torch.tensor([1.0, 2.0]))


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


def test_sae_loss_assembles_named_terms_and_changes_no_state():
    x, x_hat = torch.randn(16, 4), torch.randn(16, 4)
    s_hat_F, r_F = torch.rand(8) * 0.5, torch.rand(8) * 0.5 + 1e-3
    before = (s_hat_F.clone(), r_F.clone())
    t = sae_loss(x, x_hat, torch.tensor(3.0), s_hat_F, r_F, 1e-2, 1e-3, 0.3)
    assert_close(t.mse, legacy_mse(x_hat, x))
    assert_close(t.freq, freq_penalty(torch.log10(r_F), 0.3))
    assert_close(t.total, t.mse + 1e-2 * 3.0 + 1e-3 * t.freq)
    assert t.ghost == 0
    assert torch.equal(before[0], s_hat_F) and torch.equal(before[1], r_F)
    assert sae_loss(x, x_hat, torch.tensor(3.0), None, None, 1e-2, 0.0, 0.3).freq == 0


def _ghost_case(pre_encoder_bias, variant):
    from saelib.sae import SAE

    sae = SAE(6, 10, pre_encoder_bias=pre_encoder_bias)
    with torch.no_grad():
        sae.b_dec.normal_()
    x = torch.randn(32, 6)
    dead = torch.zeros(10, dtype=torch.bool)
    dead[[2, 7]] = True
    with torch.no_grad():
        sae.b_enc[dead] = -30.0  # never fire
    out = sae(x)
    mse = legacy_mse(out.x_hat_BD, x)
    b_dec = sae.b_dec.detach() if variant == "scalar" else sae.b_dec
    from saelib.sae import encode_pre

    pre = encode_pre(x, sae.W_enc, sae.b_enc, b_dec, pre_encoder_bias, dead)
    return sae, dead, mse, ghost_loss(x, out.x_hat_BD, pre, sae.W_dec[dead], mse, variant)


@pytest.mark.parametrize("pre_encoder_bias", [False, True])
def test_scalar_ghost_gradients_act_only_on_dead_features(pre_encoder_bias):
    sae, dead, mse, g = _ghost_case(pre_encoder_bias, "scalar")
    assert g > 0
    assert_close(g, mse.detach(), rtol=1e-4, atol=1e-6)  # rescaled to the size of the real MSE
    g.backward()
    live = ~dead
    assert sae.W_enc.grad[:, live].abs().sum() == 0 and sae.b_enc.grad[live].abs().sum() == 0
    assert sae.W_dec.grad[live].abs().sum() == 0
    assert sae.b_dec.grad is None or sae.b_dec.grad.abs().sum() == 0  # b_dec detached in this variant
    assert sae.W_enc.grad[:, dead].abs().sum() > 0 and sae.W_dec.grad[dead].abs().sum() > 0


def test_per_element_ghost_reaches_b_dec_and_exp_relu_leaves_the_encoder():
    sae, dead, mse, g = _ghost_case(True, "per_element")
    g.backward()
    assert sae.b_dec.grad.abs().sum() > 0  # the reference recipe's code let b_dec take the ghost gradient
    sae, dead, mse, g = _ghost_case(True, "exp_relu")
    g.backward()
    # exp(ReLU(pre)) of a dead feature is exp(0) = 1 whatever its encoder: no gradient reaches it
    assert sae.W_enc.grad is None or sae.W_enc.grad[:, dead].abs().sum() == 0
    assert sae.W_dec.grad[dead].abs().sum() > 0


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("B,F", [(1, 3), (16, 8), (33, 70)])
def test_fused_kernel_matches_plain_autograd(B, F, compiled):
    """The fused ReLU + a/(a+eps) (eager or compiled) gives the same values and gradients as plain autograd, for
    one SAE and for a stack with per-run eps."""
    use_compile(compiled)
    try:
        torch.manual_seed(B * F)
        for shape, eps in (((B, F), 0.2), ((3, B, F), torch.tensor([0.1, 0.2, 0.5]).view(3, 1, 1))):
            pre = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
            v, u = torch.randn(shape[:-2] + (F,), dtype=torch.float64), torch.randn(shape[:-2] + (F,), dtype=torch.float64)
            w = torch.randn(*shape, dtype=torch.float64)
            f, rc, fired, fc = relu_ratio(pre, eps)
            ((f * w).sum() + (rc * v).sum() + (fc * u).sum()).backward()
            got = pre.grad.clone()
            pre.grad = None
            f2 = torch.relu(pre)
            assert_close(rc, ratio_colsum(f2, eps))
            assert_close(fc, colsum(f2))
            assert torch.equal(fired, firing_counts(f2.detach()))
            ((f2 * w).sum() + (ratio_colsum(f2, eps) * v).sum() + (colsum(f2) * u).sum()).backward()
            assert_close(got, pre.grad)
        if not compiled:
            pre = torch.randn(B, F, dtype=torch.float64, requires_grad=True)
            torch.autograd.gradcheck(lambda p: relu_ratio(p, 0.2)[:2] + relu_ratio(p, 0.2)[3:], (pre,))
    finally:
        use_compile(False)
