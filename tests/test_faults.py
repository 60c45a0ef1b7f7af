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
    run = "l0a_3"
    sets = [a for k, v in _over(smoke_lm).items() for a in ("--set", f"{k}={v}")]
    cmd = [sys.executable, "-m", "saelib", "train", "--profile", "smoke", "--run", run, "--resume", "--no-progress",
           *sets]
    folder = smoke_lm / "runs" / run
    latest = smoke_lm / "checkpoints" / run / "latest.json"
    shutil.rmtree(folder, ignore_errors=True)
    rng = random.Random(0)
    kills = 0
    for target in sorted(rng.sample(range(5, 110), 3)):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # wait until training passes `target` steps (checkpoints come every 10), then kill at a random moment
        while proc.poll() is None and not (latest.exists() and json.loads(latest.read_text())["step"] >= target - target % 10):
            time.sleep(0.02)
        time.sleep(rng.uniform(0, 0.3))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
        assert not (folder / "metrics.csv").exists() or proc.returncode == 0
    assert kills >= 2
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    _same(uninterrupted(smoke_twin, run), folder)
    assert not list(folder.glob(".*.tmp")) and not (smoke_lm / "checkpoints" / run).exists()


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
