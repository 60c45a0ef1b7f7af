"""Feature matching against a plain full-matrix reference, and hand cases."""

import pytest
import torch
from torch.testing import assert_close

from saelib.matching import best_match, match_saes, match_summary
from saelib.sae import SAE


def reference(A_FD: torch.Tensor, B_FD: torch.Tensor):
    cos = torch.nn.functional.normalize(A_FD, dim=1) @ torch.nn.functional.normalize(B_FD, dim=1).T
    return cos.max(dim=1)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n_a,n_b,d,chunk_a,chunk_b", [
    (64, 48, 16, 64, None),    # one chunk
    (100, 70, 8, 32, None),    # A chunks do not divide 100
    (100, 70, 8, 7, 13),       # neither chunk divides
    (5, 300, 32, 2, 256),      # the last B chunk is short
    (1, 1, 3, 1, 1),
])
def test_chunked_equals_full_matrix(device, n_a, n_b, d, chunk_a, chunk_b):
    g = torch.Generator().manual_seed(n_a * 1000 + n_b)
    A = torch.randn(n_a, d, generator=g, dtype=torch.float64).to(device)
    B = (torch.randn(n_b, d, generator=g, dtype=torch.float64) * 3).to(device)  # not unit norm: normalised inside
    got = best_match(A, B, chunk_a=chunk_a, chunk_b=chunk_b)
    ref = reference(A, B)
    assert got.best_cos_A.device.type == device
    assert_close(got.best_cos_A, ref.values)
    assert torch.equal(got.best_idx_A, ref.indices)


def test_identical_saes_match_perfectly():
    sae = SAE(16, 64, generator=torch.Generator().manual_seed(1))
    r = match_saes(sae, sae, chunk_a=10)
    assert_close(r.best_cos_A, torch.ones(64), atol=1e-5, rtol=0)
    assert torch.equal(r.best_idx_A, torch.arange(64))
    s = match_summary(r.best_cos_A)
    assert s["frac_gt_0.9"] == s["frac_gt_0.8"] == s["frac_gt_0.7"] == 1.0


def test_permuted_copy_finds_the_permutation():
    a = SAE(16, 64, generator=torch.Generator().manual_seed(2))
    b = SAE(16, 64)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        b.W_dec.copy_(a.W_dec[perm])  # row j of B is row perm[j] of A
    r = match_saes(a, b, chunk_a=7, chunk_b=9)
    assert_close(r.best_cos_A, torch.ones(64), atol=1e-5, rtol=0)
    assert torch.equal(perm[r.best_idx_A], torch.arange(64))


def test_sign_flipped_row_is_not_a_match():
    g = torch.Generator().manual_seed(4)
    A = torch.nn.functional.normalize(torch.randn(32, 64, generator=g), dim=1)
    B = A.clone()
    B[5] = -A[5]
    r = best_match(A, B, chunk_a=8)
    assert r.best_idx_A[5] != 5
    assert r.best_cos_A[5] < 0.7  # random 64-d directions are far from each other
    assert_close(r.best_cos_A[torch.arange(32) != 5], torch.ones(31), atol=1e-5, rtol=0)
    assert match_summary(r.best_cos_A)["frac_gt_0.9"] == pytest.approx(31 / 32)


def test_summary_fractions_are_strictly_above():
    s = match_summary(torch.tensor([0.95, 0.9, 0.85, 0.75, 0.1]))
    assert s["frac_gt_0.9"] == pytest.approx(0.2)
    assert s["frac_gt_0.8"] == pytest.approx(0.6)
    assert s["frac_gt_0.7"] == pytest.approx(0.8)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="same d_in"):
        best_match(torch.randn(4, 8), torch.randn(4, 9))
