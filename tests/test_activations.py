import numpy as np
import pytest
import torch
from torch.testing import assert_close
from transformer_lens import HookedTransformer, HookedTransformerConfig

from saelib.activations import ActivationBuffer, SequenceStream, hook_activations
from saelib.config import load_profile

from .conftest import write_data


def small_model(d_model=16):
    cfg = HookedTransformerConfig(n_layers=2, d_model=d_model, n_heads=2, d_head=d_model // 2, d_mlp=32, n_ctx=8,
                                  d_vocab=50, act_fn="gelu_new", seed=0)
    return HookedTransformer(cfg).eval()


@pytest.fixture
def profile(tmp_path):
    cfg = load_profile("smoke", {"out_dir": str(tmp_path), "activations.context": 8, "activations.buffer_tokens": 64,
                                 "train.batch_tokens": 16, "train.tokens": 1600,
                                 "activations.lm_batch_sequences": 3})
    rng = np.random.default_rng(0)
    write_data(cfg, train=rng.integers(0, 50, size=(20, 8)))
    return cfg


@pytest.mark.parametrize("hook", ["blocks.1.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.1.hook_resid_mid"])
def test_hook_activations_equal_full_cache(hook):
    model = small_model()
    toks = torch.randint(0, 50, (3, 8))
    _, cache = model.run_with_cache(toks)
    assert_close(hook_activations(model, toks, hook), cache[hook])


def test_stop_at_layer_never_runs_later_blocks():
    model = small_model()
    called = []
    model.blocks[1].hook_resid_post.add_hook(lambda a, hook: called.append(1))
    hook_activations(model, torch.randint(0, 50, (2, 8)), "blocks.1.hook_resid_pre")
    assert not called


def test_stream_epochs_cover_every_sequence_once(profile):
    s = SequenceStream(profile)
    rows = s.next(20)
    assert sorted(map(tuple, rows.tolist())) == sorted(map(tuple, s.seqs.tolist()))
    assert s.epoch == 1 and s.index == 0


def test_buffer_is_deterministic_and_refills_at_half(profile):
    model = small_model()
    a = ActivationBuffer(model, profile, torch.device("cpu"))
    b = ActivationBuffer(model, profile, torch.device("cpu"))
    first = a.next_batch(16)
    assert len(a.buf_ND) == 64
    assert torch.equal(first, b.next_batch(16))
    a.next_batch(16)
    seqs_before = a.stream.index
    a.next_batch(16)  # 32 served of 64 < half left -> refill before serving
    assert a.stream.index > seqs_before
    assert len(a.buf_ND) >= 64


def test_buffer_state_round_trip_continues_the_same_stream(profile):
    model = small_model()
    a = ActivationBuffer(model, profile, torch.device("cpu"))
    for _ in range(3):
        a.next_batch(10)
    st = a.state_dict()
    b = ActivationBuffer(model, profile, torch.device("cpu"))
    b.load_state_dict({k: v.clone() for k, v in st["tensors"].items()}, st["stream"])
    for _ in range(8):
        assert torch.equal(a.next_batch(10), b.next_batch(10))
