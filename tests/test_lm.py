"""The `paper` path with what can be built offline: a GPT-2-sized random-weight model, and a hub that
does not answer."""

import time

import numpy as np
import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from saelib.activations import hook_activations
from saelib.config import load_profile
from saelib.evaluate import evaluate_sae
from saelib.lm import check_hook, load_lm
from saelib.sae import SAE
from saelib.text import HubUnreachableError, openwebtext_documents, pack

from .conftest import write_data


@pytest.fixture(scope="module")
def gpt2_sized():
    # GPT-2 small's shapes (12 layers, d_model 768, 12 heads, d_mlp 3072, vocab 50257), random weights
    cfg = HookedTransformerConfig(n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, n_ctx=1024,
                                  d_vocab=50257, act_fn="gelu_new", normalization_type="LN", seed=0)
    return HookedTransformer(cfg).eval()


def test_paper_hook_shapes_on_gpt2_sized_model(gpt2_sized):
    cfg = load_profile("paper")
    check_hook(gpt2_sized, cfg.activations.hook)
    toks = torch.randint(0, 50257, (2, cfg.activations.context))
    acts = hook_activations(gpt2_sized, toks, cfg.activations.hook)
    assert acts.shape == (2, 128, 768)
    sae = SAE(768, cfg.run("l0a_5e-5").expansion * 768)
    assert sae.W_dec.shape == (24576, 768)
    out = sae(acts.reshape(-1, 768))
    assert out.x_hat_BD.shape == (256, 768) and out.f_BF.shape == (256, 24576)


def test_evaluation_splices_into_gpt2_sized_model(gpt2_sized, tmp_path):
    cfg = load_profile("paper", {"out_dir": str(tmp_path), "eval.tokens": 256, "eval.batch_sequences": 2})
    toks = np.random.default_rng(0).integers(1, 50257, (2, 128))
    toks[:, 0] = 50256  # BOS, left out of the metrics
    write_data(cfg, heldout=toks, vocab_size=50257, bos_id=50256)
    res, s_F, _ = evaluate_sae(gpt2_sized, SAE(768, 1536), cfg, eps=0.2, progress=False, bos_id=50256)
    assert res["tokens"] == 254 and s_F.shape == (1536,)
    for k in ("ce_clean", "ce_sae", "ce_zero", "l0", "mse_legacy", "fvu", "dead"):
        assert np.isfinite(res[k])


def test_bad_hook_is_named():
    cfg = HookedTransformerConfig(n_layers=1, d_model=8, n_heads=1, d_head=8, d_mlp=8, n_ctx=4, d_vocab=10, act_fn="relu")
    from saelib.config import ConfigError

    with pytest.raises(ConfigError, match="not a hook of the model"):
        check_hook(HookedTransformer(cfg), "blocks.1.hook_resid_pre")


@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # loopback discard port: refused at once
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def test_unreachable_hub_fails_fast_with_the_ways_out(no_hub, monkeypatch):
    cfg = load_profile("paper")
    t0 = time.time()
    with pytest.raises(HubUnreachableError) as e:
        load_lm(cfg)
    assert time.time() - t0 < 30
    msg = str(e.value)
    assert "tiny" in msg and "HF_HUB_OFFLINE" in msg and "text.path" in msg
    with pytest.raises(HubUnreachableError):
        next(openwebtext_documents(cfg.text))
    assert time.time() - t0 < 30


def test_local_openwebtext_path(tmp_path):
    (tmp_path / "owt").mkdir()
    (tmp_path / "owt" / "a.jsonl").write_text('{"text": "first doc"}\n{"text": "second doc"}\n')
    (tmp_path / "owt" / "b.txt").write_text("third doc")
    cfg = load_profile("paper", {"text.path": str(tmp_path / "owt")})
    assert sorted(openwebtext_documents(cfg.text)) == ["first doc", "second doc", "third doc"]


def test_pack_prepends_bos_and_keeps_order():
    out = pack([[1, 2, 3], [4, 5]], context=3, bos_id=0)
    # stream: 1 2 3 0 4 5 0 -> pieces of 2, each after BOS
    assert out.tolist() == [[0, 1, 2], [0, 3, 0], [0, 4, 5]]


def test_tiny_lm_training_is_bit_reproducible(smoke_lm):
    """Two trainings of the smoke LM (2 threads) give identical weights: the embedding's backward otherwise
    accumulates in thread order, and every downstream number moved between `make figures` runs."""
    import numpy as np
    import torch

    from saelib.config import load_profile
    from saelib.lm import train_lm

    cfg = load_profile("smoke", {"out_dir": str(smoke_lm), "lm.train_steps": 10})
    seqs = np.load(smoke_lm / "data" / "train.npy")
    vocab = int(seqs.max()) + 1
    a, _ = train_lm(cfg, seqs, seqs[:4], vocab, torch.device("cpu"), progress=False)
    b, _ = train_lm(cfg, seqs, seqs[:4], vocab, torch.device("cpu"), progress=False)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.are_deterministic_algorithms_enabled()  # the setting is restored afterwards
