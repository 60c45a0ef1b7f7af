"""Injected faults: SIGKILL at random points of training, a full disk while checkpointing. Nothing may be
lost: the resumed run ends bit-identical to an uninterrupted one."""

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


@pytest.mark.slow
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


@pytest.fixture
def small_disk(smoke_lm, tmp_path):
    """A copy of the smoke data and LM whose `checkpoints/` folder is a real 24 MB filesystem (tmpfs); skipped
    where mounting is not permitted."""
    out = tmp_path / "out"
    for sub in ("data", "lm"):
        shutil.copytree(smoke_lm / sub, out / sub)
    mnt = out / "checkpoints"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24M", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here ({r.stderr.strip()[:80]})")
    yield out
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(folder, leave: int) -> None:
    """Fill the filesystem of `folder` with a ballast file until `leave` bytes are free."""
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    with open(folder / "ballast", "wb") as fh:
        fh.write(b"\0" * max(0, free - leave))


@pytest.mark.parametrize("leave", ["nothing", "room for the tensors only"])  # noqa: C901
def test_a_full_disk_while_checkpointing_loses_nothing(small_disk, smoke_twin, leave):
    """A real ENOSPC at the third checkpoint (the filesystem filled by a ballast file): with no room at all the
    tensors' temp file is cut short; filled after the tensors were written, latest.json cannot be, and a complete
    but unreferenced tensors file is left. Either way the
    previous checkpoint stays valid, the error names the problem, and after space is freed the resumed run
    removes the leftovers and ends bit-identical to an uninterrupted one."""
    run = "l0a_5"
    over = _over(small_disk) | {"train.log_every": 1}
    cfg = load_profile("smoke", over)
    ckpt = small_disk / "checkpoints" / run
    import saelib.train as T

    real_save = T.save_safetensors
    state = {"calls": 0}

    def save_then_fill(tensors, path, *a, **k):
        # the third checkpoint: the disk fills up (another writer) before (`nothing`) or after its tensors
        state["calls"] += 1
        if state["calls"] == 3 and leave == "nothing":
            fill(small_disk / "checkpoints", 0)
        real_save(tensors, path, *a, **k)
        if state["calls"] == 3 and leave != "nothing":
            fill(small_disk / "checkpoints", 0)

    T.save_safetensors = save_then_fill
    try:
        with pytest.raises(OSError, match="No space left on device"):
            train_run(cfg, run, progress=False)
    finally:
        T.save_safetensors = real_save
    meta = json.loads((ckpt / "latest.json").read_text())
    assert meta["step"] == 20 and (ckpt / meta["tensors"]).exists()
    assert not list(ckpt.glob(".*.tmp"))  # partial files are removed
    if leave != "nothing":
        assert (ckpt / "ckpt-30.safetensors").exists()  # complete, but latest.json does not name it
    (small_disk / "checkpoints" / "ballast").unlink()
    folder = train_run(cfg, run, resume=True, progress=False)
    _same(train_run(load_profile("smoke", _over(smoke_twin) | {"train.log_every": 1}), run, progress=False), folder)
    assert not ckpt.exists()


def test_leftovers_of_killed_writes_are_removed_on_the_next_start(smoke_lm):
    cfg = load_profile("smoke", _over(smoke_lm))
    runs = smoke_lm / "runs"
    runs.mkdir(exist_ok=True)
    orphans = [runs / ".l0a_1.abc123.tmp", runs / ".l0a_1.def456.old", runs / ".cfg.json.xyz.tmp"]
    orphans[0].mkdir()
    (orphans[0] / "sae.safetensors").write_bytes(b"partial")
    orphans[1].mkdir()
    orphans[2].write_text("{")
    Trainer(cfg, "l0a_1", progress=False)
    assert not any(p.exists() for p in orphans)


def test_checkpoint_of_another_config_is_refused(smoke_lm):
    cfg = load_profile("smoke", _over(smoke_lm) | {"train.tokens": 30 * 1024})
    tr = Trainer(cfg, "l0a_1", progress=False)
    tr.save_checkpoint()
    cfg2 = load_profile("smoke", _over(smoke_lm) | {"train.tokens": 30 * 1024, "runs.l0a_1.lambda_sparsity": 1.0})
    with pytest.raises(ValueError, match="(?s)other settings.*l0a_1.run.lambda_sparsity: 0.0008 in the checkpoint, 1.0 now"):
        train_run(cfg2, "l0a_1", resume=True, progress=False)
