"""The SAE: the forward pass as SPEC defines it (one SAE, a stack, a subset of features), unit-norm decoder rows,
and its files (round trip, refused mismatches, checksums)."""

import pytest
import torch
from torch.testing import assert_close

from saelib.io import ArtifactError
from saelib.sae import SAE, decode, encode_pre, normalize_rows_, project_rows_


def test_forward_matches_definition():
    sae = SAE(5, 12, pre_encoder_bias=True)
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_()
    x = torch.randn(7, 5)
    out = sae(x)
    f = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
    assert_close(out.f_BF, f)
    assert_close(out.x_hat_BD, f @ sae.W_dec + sae.b_dec)
    sae.shape.pre_encoder_bias = False
    assert_close(sae(x).f_BF, torch.relu(x @ sae.W_enc + sae.b_enc))


def test_one_encoder_for_a_stack_and_a_feature_subset():
    W_enc, b_enc, b_dec = torch.randn(3, 4, 6), torch.randn(3, 6), torch.randn(3, 4)
    W_dec = torch.randn(3, 6, 4)
    p = torch.tensor([1.0, 0.0, 1.0]).view(3, 1, 1)
    x = torch.randn(9, 4)
    pre = encode_pre(x, W_enc, b_enc, b_dec, p)
    for r in range(3):
        assert_close(pre[r], encode_pre(x, W_enc[r], b_enc[r], b_dec[r], bool(p[r])))
        assert_close(decode(torch.relu(pre), W_dec, b_dec)[r], torch.relu(pre[r]) @ W_dec[r] + b_dec[r])
    feats = torch.tensor([1, 4])
    assert_close(encode_pre(x, W_enc[0], b_enc[0], b_dec[0], True, feats), pre[0][:, feats])


def test_projection_and_renormalisation_keep_rows_on_the_sphere():
    W = torch.randn(3, 32, 8)
    normalize_rows_(W)
    assert_close(W.norm(dim=-1), torch.ones(3, 32))
    g = torch.randn(3, 32, 8)
    project_rows_(g, W)
    assert_close((g * W).sum(-1), torch.zeros(3, 32), atol=1e-6, rtol=0)


def test_save_load_round_trip(tmp_path):
    sae = SAE(4, 16, pre_encoder_bias=True)
    sae.save(tmp_path / "run", {"lambda_sparsity": 1.0})
    back = SAE.load(tmp_path / "run")
    for k, v in sae.state_dict().items():
        assert torch.equal(v, back.state_dict()[k])
    assert back.shape.pre_encoder_bias


def test_load_refuses_shape_mismatch(tmp_path):
    SAE(4, 16).save(tmp_path / "a")
    SAE(4, 8).save(tmp_path / "b")
    (tmp_path / "b" / "cfg.json").write_text((tmp_path / "a" / "cfg.json").read_text())
    with pytest.raises(ArtifactError, match="W_enc"):
        SAE.load(tmp_path / "b")


def test_load_names_missing_files_and_the_step(tmp_path):
    with pytest.raises(FileNotFoundError, match="cfg.json is missing.*saelib train"):
        SAE.load(tmp_path)


def test_a_flipped_bit_in_the_weights_is_caught(tmp_path):
    SAE(4, 16).save(tmp_path / "a")
    path = tmp_path / "a" / "sae.safetensors"
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0x10  # one bit of the last tensor's data
    path.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="checksum"):
        SAE.load(tmp_path / "a")
