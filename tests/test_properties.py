"""Property tests: every loss family, with ghost gradients and either rolling source, stays finite with finite
gradients for any inputs (zeros, huge values, all features dead); the config loader turns any malformed input
into the project's own ConfigError."""

import math

import numpy as np
import torch
import yaml  # noqa: F401
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from saelib.config import ConfigError, RunConfig, TrainConfig, load_profile
from saelib.stack import SAEStack

inputs = arrays(np.float32, st.tuples(st.integers(1, 8), st.just(4)),
                elements=st.one_of(st.just(0.0), st.floats(-1e6, 1e6, width=32)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(x=inputs, sparsity=st.sampled_from(["l0approx", "l1", "tanh"]), ghost=st.booleans(),
       variant=st.sampled_from(["scalar", "per_element", "exp_relu"]), rolling=st.sampled_from(["firing", "s_hat"]),
       dead_bias=st.booleans(), steps=st.integers(1, 3))
def test_loss_terms_finite_with_finite_gradients(x, sparsity, ghost, variant, rolling, dead_bias, steps):
    run = RunConfig(sparsity=sparsity, lambda_sparsity=1e-3, lambda_min=1e-6, ghost=ghost, dead_window=1,
                    rolling_source=rolling, ghost_variant=variant, pre_encoder_bias=True, expansion=2)
    stack = SAEStack(["r"], [run], 4, TrainConfig(lr=1e-4, batch_tokens=x.shape[0], tokens=x.shape[0] * 3))
    if dead_bias:
        with torch.no_grad():
            stack.b_enc.fill_(-1e7)  # every feature dead
    for _ in range(steps):
        def check(terms):
            for name, v in terms._asdict().items():
                assert torch.isfinite(v).all(), name
        stack.step(torch.from_numpy(x), 1e-4, check=check)
        for p in stack.parameters():
            assert torch.isfinite(p).all()


def test_all_dead_features_have_finite_penalty():
    run = RunConfig(lambda_min=1e-6, expansion=2)
    stack = SAEStack(["r"], [run], 3, TrainConfig(batch_tokens=16))
    with torch.no_grad():
        stack.b_enc.fill_(-1e3)
    out, terms = stack.step(torch.randn(16, 3), 1e-4)
    assert math.isclose(float(terms.freq[0]), 6 * 5.0, rel_tol=1e-6)  # each: log10(1e-5) - log10(1e-10) = 5
    assert all(torch.isfinite(p.grad).all() for p in stack.parameters() if p.grad is not None)


yaml_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True), st.text(max_size=8)),
    lambda children: st.one_of(st.lists(children, max_size=3),
                               st.dictionaries(st.text(max_size=12), children, max_size=3)),
    max_leaves=10)
keys = st.sampled_from(["seed", "text", "text.source", "text.heldout_plays", "lm", "lm.d_model", "lm.n_heads",
                        "activations.hook", "activations.context", "train.tokens", "train.lr", "train.device",
                        "run_defaults", "run_defaults.s_min", "run_defaults.eps", "run_defaults.sparsity",
                        "runs", "runs.l0a_1", "runs.l0a_1.lambda_sparsity", "runs.new_run.expansion",
                        "reference_run", "eval.tokens", "nonsense", "train.nope", "runs.l0a_1.bogus"])


@settings(max_examples=300, deadline=None)
@given(overrides=st.dictionaries(keys, yaml_values, min_size=1, max_size=4))
def test_malformed_overrides_end_in_config_error(overrides):
    try:
        load_profile("smoke", overrides)
    except ConfigError:
        pass


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200))
def test_malformed_profile_files_end_in_config_error(text, tmp_path_factory):
    p = tmp_path_factory.mktemp("cfg") / "bad.yaml"
    p.write_text(text)
    try:
        load_profile(p)
    except ConfigError:
        pass


@settings(max_examples=200, deadline=None)
@given(items=st.lists(st.text(max_size=30), min_size=1, max_size=3))
def test_malformed_set_strings_end_in_config_error(items):
    try:
        load_profile("smoke", items)
    except ConfigError:
        pass
