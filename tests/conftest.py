import os

import pytest
import torch

os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def smoke_lm(tmp_path_factory):
    """The smoke profile's data and LM, built once per test session in a temporary results folder."""
    from saelib.__main__ import main

    out = tmp_path_factory.mktemp("smoke")
    for cmd in ("data", "lm"):
        assert main([cmd, "--profile", "smoke", "--set", f"out_dir={out}", "--no-progress"]) == 0
    return out


@pytest.fixture(scope="session")
def smoke_twin(smoke_lm, tmp_path_factory):
    """A second results folder with the same data and LM, for runs that must be compared under one name."""
    import shutil

    out = tmp_path_factory.mktemp("smoke_twin")
    for sub in ("data", "lm"):
        shutil.copytree(smoke_lm / sub, out / sub)
    return out


def write_data(cfg, train=None, heldout=None, vocab_size=50, bos_id=0):
    """Token arrays in a profile's data folder with the info.json the data step writes (checksums, stage hash):
    for tests that bring their own tokens."""
    from saelib.io import atomic_write_json, file_digest, save_npy

    files = {}
    for name, arr in (("train.npy", train), ("heldout.npy", heldout)):
        if arr is not None:
            save_npy(cfg.data_dir / name, arr.astype("int32"))
            files[name] = file_digest(cfg.data_dir / name)
    atomic_write_json(cfg.data_dir / "info.json", {"files": files, "stage_hash": cfg.stage_hash("data"),
                                                   "vocab_size": vocab_size, "bos_id": bos_id})
