"""The real training step (`SAEStack.step`, what the trainer runs) against SPEC written plainly
(tests/reference.py): weights, every loss term, the rolling estimate r_f and the dead mask after each of several
steps, over loss families, rolling sources, pre-encoder bias, ghost-gradient variants and shapes."""

import dataclasses

import pytest
import torch
from torch.testing import assert_close

from saelib.config import RunConfig, TrainConfig
from saelib.stack import SAEStack

from .reference import ReferenceRun

FAMILIES = {
    "L0approx + P_freq": dict(sparsity="l0approx", lambda_sparsity=2e-3, lambda_min=4e-3),
    "L0approx only": dict(sparsity="l0approx", lambda_sparsity=2e-3, lambda_min=0.0),
    "L1 + P_freq": dict(sparsity="l1", lambda_sparsity=1e-3, lambda_min=4e-3),
    "plain L1": dict(sparsity="l1", lambda_sparsity=1e-3, lambda_min=0.0),
    "tanh": dict(sparsity="tanh", lambda_sparsity=1e-3, lambda_min=4e-3),
}
STEPS = 6


def run_both(runs: list[RunConfig], D: int, B: int, steps: int = STEPS, seed: int = 0):
    torch.manual_seed(seed)
    train = TrainConfig(lr=3e-3, batch_tokens=B, tokens=B * steps)
    stack = SAEStack([f"r{i}" for i in range(len(runs))], runs, D, train)
    for i, r in enumerate(runs):  # give some features a head start towards dying (ghosts, P_freq)
        with torch.no_grad():
            stack.b_enc[i, : stack.d_sae // 4] = -30.0
            if r.pre_encoder_bias:
                stack.b_dec[i].normal_()
    refs = [ReferenceRun(stack.W_enc[i], stack.b_enc[i], stack.W_dec[i], stack.b_dec[i], dataclasses.asdict(r),
                         train.lr, (train.adam_beta1, train.adam_beta2), B) for i, r in enumerate(runs)]
    xs = [torch.randn(B, D) * 2 + 0.5 for _ in range(steps)]
    for t, x in enumerate(xs):
        out, terms = stack.step(x, train.lr)
        for i, ref in enumerate(refs):
            want = ref.step(x)
            where = f"run {i}, step {t}"
            for k in ("mse", "sparsity", "freq", "ghost", "total"):
                assert_close(getattr(terms, k)[i].double(), want[k], rtol=2e-4, atol=1e-7, msg=f"{k}, {where}")
            assert_close(stack.tracker.rolling()[i].double(), want["r"], rtol=1e-5, atol=1e-12, msg=f"r_f, {where}")
            assert torch.equal(stack.tracker.dead_mask(stack.dead_window_R1)[i], want["dead"]), f"dead, {where}"
            for k, p in zip(("W_enc", "b_enc", "W_dec", "b_dec"), ref.params):
                assert_close(getattr(stack, k)[i].double(), p.detach(), rtol=1e-3, atol=2e-5, msg=f"{k}, {where}")
    return stack, refs


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("rolling_source", ["firing", "s_hat"])
@pytest.mark.parametrize("pre_encoder_bias", [False, True])
def test_step_equals_spec_reference(family, rolling_source, pre_encoder_bias):
    run = RunConfig(**FAMILIES[family], rolling_source=rolling_source, pre_encoder_bias=pre_encoder_bias,
                    s_min=0.05, rolling_window=3, expansion=4)
    run_both([run], D=8, B=64)


@pytest.mark.parametrize("variant", ["scalar", "per_element", "exp_relu"])
def test_ghost_gradients_equal_spec_reference(variant):
    run = RunConfig(sparsity="l1", lambda_sparsity=1e-3, lambda_min=0.0, pre_encoder_bias=True, ghost=True,
                    dead_window=2, ghost_variant=variant, expansion=4)
    stack, _ = run_both([run], D=8, B=64)
    assert float(stack.tracker.dead_mask(stack.dead_window_R1).sum()) > 0  # ghosts did act


@pytest.mark.parametrize("D, expansion, B", [(5, 3, 17), (16, 8, 128), (32, 2, 256)])
def test_a_mixed_stack_equals_the_reference_run_by_run(D, expansion, B):
    """Several families in one stack (per-run hyperparameters as vectors): each run still follows the reference."""
    runs = [RunConfig(**kw, s_min=0.05, rolling_window=2, expansion=expansion) for kw in FAMILIES.values()]
    runs.append(RunConfig(sparsity="l1", lambda_sparsity=1e-3, lambda_min=0.0, pre_encoder_bias=True, ghost=True,
                          dead_window=2, expansion=expansion))
    run_both(runs, D=D, B=B)


def test_the_comparison_fails_on_a_planted_error(monkeypatch):
    """The check has teeth: a wrong P_freq (log10(s_min) off by a factor of 10) in the trainer is caught."""
    import saelib.losses as L

    real = L.freq_penalty
    monkeypatch.setattr(L, "freq_penalty", lambda log10_s, s_min: real(log10_s, s_min * 10))
    run = RunConfig(**FAMILIES["L0approx + P_freq"], s_min=0.05, rolling_window=3, expansion=4)
    with pytest.raises(AssertionError, match="freq"):
        run_both([run], D=8, B=64)
