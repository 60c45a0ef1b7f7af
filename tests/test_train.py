"""Trainer on a real (smoke-sized) LM: logging, checkpoints, resume equivalence, group = alone, numerical faults."""

import json
import math

import pandas as pd
import pytest
import torch

from saelib.config import ConfigError, load_profile
from saelib.io import ArtifactError
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
    meta = json.loads((folder / "cfg.json").read_text())
    assert meta["train_hash"] == cfg.stage_hash("train", "l0a_1") and meta["label"] == "λ0 = 8e-4"
    assert {"commit", "dirty", "versions", "threads", "device", "config_hash"} <= set(meta["provenance"])


def test_reference_recipe_geometric_median_and_ghost(smoke_lm):
    cfg = load_profile("smoke", {"out_dir": str(smoke_lm), "train.tokens": 10 * 1024, "runs.ref_l1.dead_window": 1})
    tr = Trainer(cfg, "ref_l1", progress=False)
    sample = tr.source.peek(4096).clone()
    stack = tr.stacks[0]
    with torch.no_grad():
        stack.b_enc[0, :8] = -30.0  # eight features that never fire (exp(pre) stays > 0 for ghosts)
    w_dead = stack.W_enc[0, :, :8].detach().clone()
    tr.train()
    rows = pd.read_csv(cfg.run_dir("ref_l1") / "metrics.csv")
    assert (rows.ghost_term.iloc[1:] > 0).all()  # dead from step 1 on: ghost gradients act
    assert not torch.equal(stack.W_enc[0, :, :8].detach(), w_dead)  # and reach the dead features' encoder
    assert "l1_term" in rows.columns
    # b_dec started at the geometric median of the first buffer: check it is closer to that than to zero
    b_dec = stack.b_dec[0].detach()
    assert torch.norm(b_dec - geometric_median(sample)) < torch.norm(geometric_median(sample))


class Interrupt(Exception):
    pass


def interrupt_at(tr: Trainer, step: int, stack: int = 0):
    """Make the trainer's stack raise (a stand-in for a kill) when it is about to take `step`."""
    s = tr.stacks[stack]
    real = s.step

    def boom(*a, **k):
        if tr.step == step:
            raise Interrupt
        return real(*a, **k)
    s.step = boom


def _same_run(a, b, atol=None):
    """Bit-identical weights and logged metrics; with `atol`, weights within it and the continuous loss terms
    within 0.5% (counts such as L0 may move where a latent sits at 0)."""
    exact = atol is None
    wa, wb = SAE.load(a).state_dict(), SAE.load(b).state_dict()
    for k in wa:
        if exact:
            assert torch.equal(wa[k], wb[k]), (a.name, k)
        else:
            torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=atol, msg=lambda m: f"{a.name} {k}: {m}")
    ma, mb = pd.read_csv(a / "metrics.csv"), pd.read_csv(b / "metrics.csv")
    cols = [c for c in ma.columns if c != "seconds"]
    if exact:
        pd.testing.assert_frame_equal(ma[cols], mb[cols])
    else:
        cols = ["step", "tokens", "loss", "mse_term", "mse"]
        pd.testing.assert_frame_equal(ma[cols], mb[cols], check_exact=False, rtol=5e-3)


def test_resume_after_interruption_is_bit_identical(smoke_lm, smoke_twin):
    over = {"train.tokens": 30 * 1024, "train.checkpoint_every": 10}
    full = train_run(load_profile("smoke", over | {"out_dir": str(smoke_twin)}), "l0a_2", progress=False)
    cfg = load_profile("smoke", over | {"out_dir": str(smoke_lm)})
    tr = Trainer(cfg, "l0a_2", progress=False)
    interrupt_at(tr, 25)  # past the checkpoint at step 20
    with pytest.raises(Interrupt):
        tr.train()
    _same_run(full, train_run(cfg, "l0a_2", resume=True, progress=False))


def test_runs_start_from_different_initialisations(smoke_lm):
    cfg = load_profile("smoke", {"out_dir": str(smoke_lm)})
    a, b = Trainer(cfg, "l0a_1", progress=False), Trainer(cfg, "ref_l1", progress=False)
    assert not torch.equal(a.sae().W_dec, b.sae().W_dec)
    assert torch.equal(a.sae().W_dec, Trainer(cfg, "l0a_1", progress=False).sae().W_dec)


def test_nan_stops_training_naming_step_term_and_checkpoint(smoke_lm):
    cfg = load_profile("smoke", {"out_dir": str(smoke_lm), "train.tokens": 30 * 1024, "train.checkpoint_every": 10})
    tr = Trainer(cfg, "l0a_4", progress=False)
    real = tr.source.next_batch

    def poisoned(n):
        x = real(n).clone()
        if tr.step == 15:
            x[0, 0] = math.nan
        return x

    tr.source.next_batch = poisoned
    with pytest.raises(TrainingDiverged, match=r"non-finite activations.*step 15.*not at fault.*latest.json \(step 10\)"):
        tr.train()
    # the named checkpoint resumes
    folder = train_run(cfg, "l0a_4", resume=True, progress=False)
    assert (folder / "metrics.csv").exists()


def test_a_diverging_sae_names_the_last_good_checkpoint_not_its_own_weights(smoke_lm):
    """lr = 1e30 with a checkpoint every step: the checkpoint of the failing step holds the weights that failed,
    so it is dropped and the message says there is no good one (or names the one before)."""
    cfg = load_profile("smoke", {"out_dir": str(smoke_lm), "train.tokens": 10 * 1024, "train.checkpoint_every": 1,
                                 "train.lr": 1e30})
    with pytest.raises(TrainingDiverged, match=r"run l0a_5: non-finite.*step 1\b.*no good checkpoint") as e:
        train_run(cfg, "l0a_5", progress=False)
    assert "resume" not in str(e.value).split("no good checkpoint")[1]
    ckpt = smoke_lm / "checkpoints" / "l0a_5"
    assert not (ckpt / "latest.json").exists() and not list(ckpt.glob("ckpt-*"))


def test_group_training_equals_each_run_alone_even_interrupted(smoke_lm, smoke_twin):
    """Runs trained in lockstep on one shared stream (as stacks of two widths) end bit-identical to each run
    trained by itself, also when the group is interrupted between its two stacks' steps of one step and
    resumed from its checkpoint. On CUDA a stack of two SAEs runs other matmul kernels than a stack of one, and
    Adam turns a rounding-sized gradient difference near zero into a step of up to lr: there the weights agree
    within one step (lr), not bit for bit (measured on an H200, TF32 off: 47 of 16,384 W_enc entries of l0a_3
    apart, by up to 2.9e-4 = 0.15 lr). On CPU they stay bit-identical."""
    over = {"train.tokens": 30 * 1024, "train.checkpoint_every": 10, "runs.l1_plain_1.expansion": 2}
    cuda = torch.cuda.is_available()  # train.device: auto trains there
    if cuda:
        over["train.tf32"] = False
    names = ["l0a_3", "ref_l1", "l1_plain_1_s1"]  # geometric-median init + ghost grads; another width
    twin = load_profile("smoke", over | {"out_dir": str(smoke_twin)})
    alone = {n: train_run(twin, n, progress=False) for n in names}
    cfg = load_profile("smoke", over | {"out_dir": str(smoke_lm)})
    tr = Trainer(cfg, names, progress=False)
    assert len(tr.stacks) == 2
    interrupt_at(tr, 25, stack=1)  # the first stack has taken step 25 already
    with pytest.raises(Interrupt):
        tr.train()
    ckpt = smoke_lm / "checkpoints"
    assert [json.loads(p.read_text())["step"] for p in ckpt.glob("group-*/latest.json")] == [20]
    folders = train_runs(cfg, names, resume=True, progress=False)
    for n, folder in zip(names, folders):
        _same_run(alone[n], folder, atol=cfg.train.lr if cuda else None)
    assert not list(ckpt.glob("group-*"))


def test_compiled_and_eager_kernels_train_the_same_run(smoke_lm, smoke_twin):
    over = {"train.tokens": 20 * 1024}
    a = train_run(load_profile("smoke", over | {"out_dir": str(smoke_lm), "train.compile": True}), "l1_freq_1",
                  progress=False)
    b = train_run(load_profile("smoke", over | {"out_dir": str(smoke_twin), "train.compile": False}), "l1_freq_1",
                  progress=False)
    wa, wb = SAE.load(a).state_dict(), SAE.load(b).state_dict()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-3, atol=1e-4)


def test_resume_refuses_other_settings_and_a_finished_group_is_done(smoke_lm, capsys):
    cfg = load_profile("smoke", {"out_dir": str(smoke_lm), "train.tokens": 30 * 1024, "train.checkpoint_every": 10})
    tr = Trainer(cfg, "l0a_1", progress=False)
    interrupt_at(tr, 15)
    with pytest.raises(Interrupt):
        tr.train()
    for change, key in (({"train.lr": 1e-3}, "train.lr: 0.002 in the checkpoint, 0.001 now"),
                        ({"seed": 1}, "holds an LM trained with other settings"),  # caught before the checkpoint
                        ({"activations.buffer_tokens": 8192}, "activations.buffer_tokens: 16384 in the checkpoint"),
                        ({"runs.l0a_1.lambda_sparsity": 1.0}, "run.lambda_sparsity")):
        other = load_profile("smoke", {"out_dir": str(smoke_lm), "train.tokens": 30 * 1024,
                                       "train.checkpoint_every": 10} | change)
        with pytest.raises(ArtifactError, match=key.replace("(", r"\(")):
            train_run(other, "l0a_1", resume=True, progress=False)
    folder = train_run(cfg, "l0a_1", resume=True, progress=False)
    stamp = (folder / "sae.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    train_run(cfg, "l0a_1", resume=True, progress=False)  # finished: says so, trains nothing
    assert "already trained" in capsys.readouterr().err
    assert (folder / "sae.safetensors").stat().st_mtime_ns == stamp


def test_group_of_a_run_twice_or_unknown_run_is_refused(smoke_lm):
    cfg = load_profile("smoke", {"out_dir": str(smoke_lm)})
    with pytest.raises(ValueError, match="distinct"):
        Trainer(cfg, ["l0a_1", "l0a_1"], progress=False)
    with pytest.raises(ConfigError, match="unknown run 'nope'"):
        Trainer(cfg, ["l0a_1", "nope"], progress=False)
