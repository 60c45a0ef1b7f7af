"""Injected faults: SIGKILL at random points of training, a full disk while checkpointing. Nothing may be
lost: the resumed run ends bit-identical to an uninterrupted one."""

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from saelib.config import load_profile
from saelib.sae import SAE
from saelib.train import Trainer, train_run

TOKENS = 120 * 1024


def _over(out):
    return {"out_dir": str(out), "train.tokens": TOKENS, "train.checkpoint_every": 10}


def _same(folder_a, folder_b):
    a, b = SAE.load(folder_a).state_dict(), SAE.load(folder_b).state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ma, mb = pd.read_csv(folder_a / "metrics.csv"), pd.read_csv(folder_b / "metrics.csv")
    cols = [c for c in ma.columns if c != "seconds"]
    pd.testing.assert_frame_equal(ma[cols], mb[cols])


def uninterrupted(out, run):
    """The same run trained without interruption, in a twin results folder (same data and LM)."""
    return train_run(load_profile("smoke", _over(out)), run, progress=False)


def test_sigkill_at_random_steps_then_resume_is_bit_identical(smoke_lm, smoke_twin):
    """SIGKILL at random moments after random checkpoints, then resume. A kill may land at any instant,
    including after the run folder was published (a fast machine finishes the last steps before the kill):
    the run folder is then complete. Attempts continue until three kills have landed mid-training."""
    run = "l0a_3"
    sets = [a for k, v in _over(smoke_lm).items() for a in ("--set", f"{k}={v}")]
    cmd = [sys.executable, "-m", "saelib", "train", "--profile", "smoke", "--run", run, "--resume", "--no-progress",
           *sets]
    folder = smoke_lm / "runs" / run
    latest = smoke_lm / "checkpoints" / run / "latest.json"
    shutil.rmtree(folder, ignore_errors=True)
    want = uninterrupted(smoke_twin, run)
    rng = random.Random(0)
    kills = attempts = 0
    while kills < 3:
        attempts += 1
        assert attempts <= 12, f"only {kills} of 12 kills landed before the run finished"
        target = rng.choice(range(10, 90, 10))  # a checkpoint step; at least 30 steps remain after it
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        while proc.poll() is None and not (latest.exists() and json.loads(latest.read_text())["step"] >= target):
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.05))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.returncode == -signal.SIGKILL and not folder.exists():
            kills += 1  # landed mid-training
        else:
            assert proc.returncode == 0, proc.stderr.read().decode()
        # a run folder is published in one rename: if it exists it is complete, whenever the kill landed
        if folder.exists():
            _same(want, folder)
            shutil.rmtree(folder)  # and start over: the next attempt must be killed mid-training
            shutil.rmtree(latest.parent, ignore_errors=True)
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    _same(want, folder)
    assert not list(folder.parent.glob(".*.tmp")) and not (smoke_lm / "checkpoints" / run).exists()


def test_disk_full_while_checkpointing_keeps_previous_checkpoint(smoke_lm, smoke_twin, monkeypatch):
    run = "l0a_5"
    cfg = load_profile("smoke", _over(smoke_lm))
    import saelib.io as sio

    real = sio.save_file
    calls = {"n": 0}

    def full_disk(tensors, path, metadata=None):
        calls["n"] += 1
        if calls["n"] == 3:  # the third checkpoint: write part of it, then the disk is full
            with open(path, "wb") as fh:
                fh.write(b"\0" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, path, metadata=metadata)

    monkeypatch.setattr(sio, "save_file", full_disk)
    with pytest.raises(OSError, match="No space"):
        train_run(cfg, run, progress=False)
    ckpt = smoke_lm / "checkpoints" / run
    meta = json.loads((ckpt / "latest.json").read_text())
    assert meta["step"] == 20 and (ckpt / meta["tensors"]).exists()
    assert not list(ckpt.glob(".*.tmp"))  # the partial file is gone
    monkeypatch.setattr(sio, "save_file", real)
    tr = Trainer(cfg, run, progress=False)
    tr.load_checkpoint(meta)  # the previous checkpoint is intact and loads
    assert tr.step == 20
    _same(uninterrupted(smoke_twin, run), train_run(cfg, run, resume=True, progress=False))


def test_checkpoint_of_another_config_is_refused(smoke_lm):
    cfg = load_profile("smoke", _over(smoke_lm) | {"train.tokens": 30 * 1024})
    tr = Trainer(cfg, "l0a_1", progress=False)
    tr.save_checkpoint()
    cfg2 = load_profile("smoke", _over(smoke_lm) | {"runs.l0a_1.lambda_sparsity": 1.0})
    with pytest.raises(ValueError, match="another run config"):
        train_run(cfg2, "l0a_1", resume=True, progress=False)
