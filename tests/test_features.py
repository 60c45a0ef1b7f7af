"""High-density feature analysis against a brute-force pass over all activations."""

import numpy as np
import pandas as pd
import pytest
import torch
from torch.testing import assert_close
from transformer_lens import HookedTransformer, HookedTransformerConfig

from saelib.activations import hook_activations
from saelib.config import load_profile
from saelib.features import add_contexts, analyze_run, collect_examples, dense_features, feature_scan, render_contexts_html
from saelib.sae import SAE

HOOK = "blocks.1.hook_resid_pre"
S = 8


@pytest.fixture(scope="module")
def setup():
    cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=S, d_vocab=50,
                                  act_fn="gelu_new", seed=0)
    model = HookedTransformer(cfg).eval()
    sae = SAE(16, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # spread the densities: some features almost always on, some rare
        sae.b_enc.copy_(torch.linspace(-2.0, 1.0, 24))
    seqs = np.random.default_rng(0).integers(0, 50, size=(37, S))  # 37: batches do not divide it
    with torch.no_grad():
        f_TF = sae.encode(hook_activations(model, torch.as_tensor(seqs), HOOK).reshape(-1, 16))
    return model, sae, seqs, f_TF


FEATS = [0, 3, 7, 12, 20, 23]


def test_topk_is_sorted_and_the_k_largest(setup):
    model, sae, seqs, f_TF = setup
    ex = collect_examples(model, sae, seqs, HOOK, FEATS, k=10, batch_sequences=5)
    for f in FEATS:
        got = ex.top[ex.top.feature == f]
        col = f_TF[:, f]
        ref = col[col > 0].sort(descending=True).values[:10]
        assert list(got["rank"]) == list(range(len(ref)))
        assert np.all(np.diff(got.act.to_numpy()) <= 0)
        assert_close(torch.as_tensor(got.act.to_numpy()), ref)
        # the kept positions really carry those activations
        assert_close(col[torch.as_tensor(got.seq.to_numpy() * S + got.pos.to_numpy())], ref)


def test_positions_and_densities_match_brute_force(setup):
    model, sae, seqs, f_TF = setup
    ex = collect_examples(model, sae, seqs, HOOK, FEATS, k=3, batch_sequences=4)
    fired_NSF = (f_TF > 0).reshape(len(seqs), S, -1)
    for f in FEATS:
        ref = fired_NSF[:, :, f].sum(0).numpy()
        assert np.array_equal(ex.positions.loc[f].to_numpy(), ref)
        assert ex.positions.loc[f].sum() == ex.summary.loc[f, "fires"] == int((f_TF[:, f] > 0).sum())
    assert ex.n_tokens == seqs.size
    assert list(ex.positions.columns) == list(range(S))
    s_F, max_F = feature_scan(model, sae, seqs, HOOK, batch_sequences=6)
    assert_close(s_F, (f_TF > 0).float().mean(0))
    assert_close(max_F, f_TF.max(0).values)
    assert_close(torch.as_tensor(ex.summary.s_f.to_numpy()), s_F[FEATS].double())


def test_band_samples_lie_inside_their_bands(setup):
    model, sae, seqs, f_TF = setup
    bands = [(0.0, 0.1), (0.05, 0.15), (0.1, 0.2), (0.5, 0.9), (0.9, 1.0)]
    ex = collect_examples(model, sae, seqs, HOOK, FEATS, bands=bands, per_band=4, batch_sequences=5)
    b = ex.bands
    assert len(b) > 0
    top = b.hi >= 1.0
    assert ((b.frac >= b.lo) & ((b.frac < b.hi) | (top & (b.frac <= 1.0)))).all()
    assert (b.act > 0).all()
    max_F = f_TF.max(0).values
    for f in FEATS:
        col = f_TF[:, f]
        frac = col / max_F[f]
        for j, (lo, hi) in enumerate(bands):
            got = b[(b.feature == f) & (b.band == j)]
            members = (col > 0) & (frac >= lo) & ((frac < hi) | (hi >= 1.0))
            assert len(got) == min(4, int(members.sum()))  # all of a small band, else per_band of it
            flat = torch.as_tensor(got.seq.to_numpy() * S + got.pos.to_numpy())
            assert members[flat].all()
            assert len(set(flat.tolist())) == len(got)  # without replacement
            assert_close(torch.as_tensor(got.act.to_numpy()), col[flat])


def test_band_samples_are_seeded(setup):
    model, sae, seqs, f_TF = setup
    a = collect_examples(model, sae, seqs, HOOK, FEATS, per_band=2, seed=1)
    b = collect_examples(model, sae, seqs, HOOK, FEATS, per_band=2, seed=1)
    c = collect_examples(model, sae, seqs, HOOK, FEATS, per_band=2, seed=2)
    pd.testing.assert_frame_equal(a.bands, b.bands)
    assert not a.bands[["seq", "pos"]].equals(c.bands[["seq", "pos"]])


def test_given_max_equals_scanned_max_and_a_wrong_one_is_refused(setup):
    model, sae, seqs, f_TF = setup
    _, max_F = feature_scan(model, sae, seqs, HOOK)
    a = collect_examples(model, sae, seqs, HOOK, FEATS, max_act_F=max_F)
    b = collect_examples(model, sae, seqs, HOOK, FEATS)
    pd.testing.assert_frame_equal(a.bands, b.bands)
    with pytest.raises(ValueError, match="max_act_F does not match"):
        collect_examples(model, sae, seqs, HOOK, FEATS, max_act_F=max_F * 0.5)


def test_no_features_gives_empty_tables(setup):
    model, sae, seqs, _ = setup
    ex = collect_examples(model, sae, seqs, HOOK, [])
    assert len(ex.top) == len(ex.bands) == len(ex.positions) == 0


def test_dense_features_threshold_and_order():
    d = dense_features(torch.tensor([0.05, 0.3, 0.1, 0.5, 0.11]))
    assert d.feature.tolist() == [3, 1, 4]  # strictly above 0.1, densest first
    assert dense_features(torch.tensor([0.05, 0.3]), threshold=0.01).feature.tolist() == [1, 0]


class CharTokenizer:
    def __init__(self, alphabet):
        self.alphabet = alphabet

    def decode(self, ids):
        return "".join(self.alphabet[i] for i in ids)


def test_html_escapes_text_and_marks_the_token():
    seqs = np.array([[0, 1, 2, 3, 4]])
    tok = CharTokenizer(["<", "b", ">", "&", "\n"])
    df = add_contexts(pd.DataFrame({"feature": [7], "act": [1.5], "seq": [0], "pos": [2]}), seqs, tok, 2, 2)
    assert (df.left[0], df.token[0], df.right[0]) == ("<b", ">", "&\n")
    page = render_contexts_html(df, title="f<7>")
    assert "<b" not in page and "&lt;b" in page and "&amp;" in page and "f&lt;7&gt;" in page
    assert "<mark" in page and "&gt;</mark>" in page
    assert "↵" in page  # newline shown, not breaking the row
    with pytest.raises(ValueError, match="add_contexts"):
        render_contexts_html(df.drop(columns="left"))


def test_analyze_run_on_the_smoke_lm(smoke_lm):
    """The real path: smoke LM and tokenizer, a briefly trained run, no features.safetensors (scan first); BOS
    positions left out as the evaluation leaves them out."""
    from saelib.data import load_tokenizer
    from saelib.evaluate import heldout_sequences
    from saelib.train import train_run

    cfg = load_profile("smoke", {"out_dir": str(smoke_lm), "train.tokens": 10 * 1024})
    train_run(cfg, "l1_plain_1", progress=False)
    dense, ex = analyze_run(cfg, "l1_plain_1", threshold=0.1, k=5, per_band=2)
    assert len(dense) > 0 and (dense.s_f > 0.1).all()
    assert set(ex.top.feature) <= set(dense.feature)
    assert ex.positions.to_numpy().sum() == ex.summary.fires.sum()
    seqs = heldout_sequences(cfg)
    assert ex.n_tokens == int((seqs != load_tokenizer(cfg).bos_id).sum())
    assert ex.positions[0].sum() == 0  # position 0 is always BOS: never counted
    assert {"left", "token", "right"} <= set(ex.top.columns) and {"left", "token"} <= set(ex.bands.columns)
    page = render_contexts_html(ex.top)
    assert page.count("<mark") == min(len(ex.top), 200)
    assert "<|endoftext|>" not in page  # BOS shows in contexts (escaped), never as the marked token
