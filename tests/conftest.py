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
