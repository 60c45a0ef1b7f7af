import pytest
import torch
from torch.testing import assert_close

from saelib.config import RunConfig
from saelib.losses import sae_loss
from saelib.sae import SAE
from saelib.sparsity import SparsityTracker


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


def test_decoder_rows_unit_norm_after_a_step():
    sae = SAE(8, 32)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-1)
    x = torch.randn(64, 8) * 5
    tracker = SparsityTracker(32, window=4)
    for _ in range(3):
        terms = sae_loss(RunConfig(lambda_sparsity=1e-3), sae, x, sae(x), tracker)
        opt.zero_grad()
        terms.total.backward()
        sae.project_decoder_grad_()
        # the projected gradient has no component along its row
        assert_close((sae.W_dec.grad * sae.W_dec).sum(1), torch.zeros(32), atol=1e-6, rtol=0)
        opt.step()
        assert not torch.allclose(sae.W_dec.norm(dim=1), torch.ones(32))  # the step moved rows off the sphere
        sae.normalize_decoder_()
        assert_close(sae.W_dec.norm(dim=1), torch.ones(32))


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
    with pytest.raises(ValueError, match="W_enc"):
        SAE.load(tmp_path / "b")


def test_load_names_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="train the run first"):
        SAE.load(tmp_path)
