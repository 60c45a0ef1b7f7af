"""Trainer on a real (smoke-sized) LM: logging, checkpoints, resume equivalence, numerical faults."""

import json
import math

import pandas as pd
import pytest
import torch

from saelib.config import ConfigError, load_profile
from saelib.sae import SAE
from saelib.train import Trainer, TrainingDiverged, geometric_median, train_run, train_runs


def test_geometric_median_is_robust():
    x = torch.tensor([[0.0], [1.0], [2.0], [3.0], [100.0]])
    assert abs(float(geometric_median(x)) - 2.0) < 1e-2  # the 1-D geometric median is the median
    pts = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]]) + torch.tensor([3.0, 4.0])
    assert torch.allclose(geometric_median(pts), torch.tensor([3.0, 4.0]), atol=1e-4)


def test_run_logs_every_term_and_keeps_decoder_unit_norm(smoke_lm):
    cfg = load_profile("smoke", {"out_dir": str(smoke_lm), "train.tokens": 20 * 1024})
    folder = train_run(cfg, "l0a_1", progress=False)
    rows = pd.read_csv(folder / "metrics.csv")
    for col in ("step", "loss", "mse_term", "l0approx_term", "freq_term", "ghost_term", "l0", "l1", "mse_legacy",
                "mse", "fvu", "dead_rolling", "below_s_min", "lr", "seconds"):
        assert col in rows.columns
    assert rows.step.tolist() == [0, 5, 10, 15, 19]
    assert rows.loss.iloc[-1] < rows.loss.iloc[0]
    sae = SAE.load(folder)
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(sae.d_sae), atol=1e-5)
    assert not (smoke_lm / "checkpoints" / "l0a_1").exists()


def test_reference_recipe_geometric_median_and_ghost(smoke_lm):
    cfg = load_profile("smoke", {"out_dir": str(smoke_lm), "train.tokens": 10 * 1024, "runs.ref_l1.dead_window": 1})
    tr = Trainer(cfg, "ref_l1", progress=False)
    sample = tr.buffer.peek(4096).clone()
    with torch.no_grad():
        tr.sae.b_enc[:8] = -30.0  # eight features that never fire (exp(pre) stays > 0 for ghosts)
    w_dead = tr.sae.W_enc[:, :8].detach().clone()
    tr.train()
    rows = pd.read_csv(tr.runs[0].folder / "metrics.csv")
    assert (rows.ghost_term.iloc[1:] > 0).all()  # dead from step 1 on: ghost gradients act
    assert not torch.equal(tr.sae.W_enc[:, :8].detach(), w_dead)  # and reach the dead features' encoder
    assert "l1_term" in rows.columns
    # b_dec started at the geometric median of the first buffer: check it is closer to that than to zero
    assert torch.norm(tr.sae.b_dec.detach() - geometric_median(sample)) < torch.norm(geometric_median(sample))


class Interrupt(Exception):
    pass


def test_resume_after_interruption_is_bit_identical(smoke_lm, smoke_twin, monkeypatch):
    over = {"train.tokens": 30 * 1024, "train.checkpoint_every": 10}
    full = train_run(load_profile("smoke", over | {"out_dir": str(smoke_twin)}), "l0a_2", progress=False)
    want_w = SAE.load(full).state_dict()
    want_rows = pd.read_csv(full / "metrics.csv")

    cfg = load_profile("smoke", over | {"out_dir": str(smoke_lm)})
    # kill the run (an exception, as a stand-in for SIGKILL) at step 25, past the checkpoint at step 20
    real = Trainer.log_row

    def boom(self, *a, **k):
        if self.step == 25:
            raise Interrupt
        return real(self, *a, **k)

    monkeypatch.setattr(Trainer, "log_row", boom)
    with pytest.raises(Interrupt):
        train_run(cfg, "l0a_2", progress=False)
    monkeypatch.setattr(Trainer, "log_row", real)
    folder = train_run(cfg, "l0a_2", resume=True, progress=False)
    got = SAE.load(folder).state_dict()
    for k in want_w:
        assert torch.equal(want_w[k], got[k]), k
    got_rows = pd.read_csv(folder / "metrics.csv")
    cols = [c for c in want_rows.columns if c != "seconds"]
    pd.testing.assert_frame_equal(want_rows[cols], got_rows[cols])


def test_runs_start_from_different_initialisations(smoke_lm):
    cfg = load_profile("smoke", {"out_dir": str(smoke_lm)})
    a, b = Trainer(cfg, "l0a_1", progress=False), Trainer(cfg, "ref_l1", progress=False)
    assert not torch.equal(a.sae.W_dec, b.sae.W_dec)
    assert torch.equal(a.sae.W_dec, Trainer(cfg, "l0a_1", progress=False).sae.W_dec)


def test_nan_stops_training_naming_step_term_and_checkpoint(smoke_lm, monkeypatch):
    cfg = load_profile("smoke", {"out_dir": str(smoke_lm), "train.tokens": 30 * 1024, "train.checkpoint_every": 10})
    tr = Trainer(cfg, "l0a_4", progress=False)
    real = tr.buffer.next_batch

    def poisoned(n):
        x = real(n).clone()
        if tr.step == 15:
            x[0, 0] = math.nan
        return x

    tr.buffer.next_batch = poisoned
    with pytest.raises(TrainingDiverged, match=r"activations.*step 15.*latest.json \(step 10\)"):
        tr.train()
    # the named checkpoint resumes
    folder = train_run(cfg, "l0a_4", resume=True, progress=False)
    assert (folder / "metrics.csv").exists()


def _same_run(a, b):
    wa, wb = SAE.load(a).state_dict(), SAE.load(b).state_dict()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), (a.name, k)
    ma, mb = pd.read_csv(a / "metrics.csv"), pd.read_csv(b / "metrics.csv")
    cols = [c for c in ma.columns if c != "seconds"]
    pd.testing.assert_frame_equal(ma[cols], mb[cols])


def test_group_training_equals_each_run_alone_even_interrupted(smoke_lm, smoke_twin, monkeypatch):
    """Runs trained in lockstep on one shared stream end bit-identical to each run trained by itself, also
    when the group is interrupted mid-step (one run ahead of the others) and resumed from its checkpoint."""
    over = {"train.tokens": 30 * 1024, "train.checkpoint_every": 10}
    names = ["l0a_3", "ref_l1", "l1_plain_1_s1"]  # geometric-median init + ghost grads in the middle
    twin = load_profile("smoke", over | {"out_dir": str(smoke_twin)})
    alone = {n: train_run(twin, n, progress=False) for n in names}
    cfg = load_profile("smoke", over | {"out_dir": str(smoke_lm)})
    real = Trainer.log_row

    def boom(self, r, *a, **k):
        if self.step == 25 and r.name == "ref_l1":  # l0a_3 has taken step 25 already
            raise Interrupt
        return real(self, r, *a, **k)

    monkeypatch.setattr(Trainer, "log_row", boom)
    with pytest.raises(Interrupt):
        train_runs(cfg, names, progress=False)
    monkeypatch.setattr(Trainer, "log_row", real)
    ckpt = smoke_lm / "checkpoints"
    assert [json.loads(p.read_text())["step"] for p in ckpt.glob("group-*/latest.json")] == [20]
    folders = train_runs(cfg, names, resume=True, progress=False)
    for n, folder in zip(names, folders):
        _same_run(alone[n], folder)
    assert not list(ckpt.glob("group-*"))


def test_group_of_a_run_twice_or_unknown_run_is_refused(smoke_lm):
    cfg = load_profile("smoke", {"out_dir": str(smoke_lm)})
    with pytest.raises(ValueError, match="distinct"):
        Trainer(cfg, ["l0a_1", "l0a_1"], progress=False)
    with pytest.raises(ConfigError, match="unknown run 'nope'"):
        Trainer(cfg, ["l0a_1", "nope"], progress=False)
