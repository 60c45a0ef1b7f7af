"""Property tests: loss terms stay finite for any non-negative activations; the config loader turns any
malformed input into the project's own ConfigError."""

import math

import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from saelib.config import ConfigError, load_profile
from saelib.config import RunConfig
from saelib.losses import sae_loss
from saelib.sae import SAE, SAEOutput
from saelib.sparsity import SparsityTracker

import numpy as np
import pytest

acts = arrays(np.float32, st.tuples(st.integers(1, 8), st.just(6)),
              elements=st.one_of(st.just(0.0), st.floats(0, 1e6, width=32)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(f=acts, sparsity=st.sampled_from(["l0approx", "l1", "tanh"]), ghost=st.booleans(),
       rolling=st.sampled_from(["firing", "s_hat"]), steps=st.integers(1, 3))
def test_loss_terms_finite_with_finite_gradients(f, sparsity, ghost, rolling, steps):
    run = RunConfig(sparsity=sparsity, lambda_sparsity=1e-3, lambda_min=1e-6, ghost=ghost, dead_window=1,
                    rolling_source=rolling)
    sae = SAE(4, 6, pre_encoder_bias=True)
    tracker = SparsityTracker(6, window=2)
    x = torch.randn(f.shape[0], 4)
    for _ in range(steps):
        f_t = torch.tensor(f, requires_grad=True)
        pre = f_t.detach().clone().requires_grad_(True)
        out = SAEOutput(pre, f_t, sae.decode(f_t))
        terms = sae_loss(run, sae, x, out, tracker)
        for name, v in terms._asdict().items():
            assert torch.isfinite(v), name
        terms.total.backward()
        assert torch.isfinite(f_t.grad).all()
        for p in sae.parameters():
            assert p.grad is None or torch.isfinite(p.grad).all()
        sae.zero_grad()


def test_all_dead_features_have_finite_penalty():
    run = RunConfig(lambda_min=1e-6)
    f = torch.zeros(16, 6, requires_grad=True)
    sae = SAE(4, 6)
    t = sae_loss(run, sae, torch.randn(16, 4), SAEOutput(f, f, sae.decode(f)), SparsityTracker(6, 3))
    assert math.isclose(float(t.freq), 6 * 5.0, rel_tol=1e-6)  # each: log10(1e-5) - log10(1e-10) = 5
    t.total.backward()
    assert torch.isfinite(f.grad).all()


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
