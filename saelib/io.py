"""Atomic artifact writing and safe tensor loading.

Every artifact is written to a temporary name in the same folder and renamed into place, so a killed
process never leaves a file that a later step could take as complete. Tensors go through safetensors
only (no pickle).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import load_file, save_file


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success rename it onto `path`, on error delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files (writers may also replace tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder next to `path`; on success it replaces `path` (whose old contents, if any, are
    removed), on error it is deleted. A reader sees either the old folder or the complete new one."""
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700 folders
        yield tmp
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if path.exists():  # move the old folder aside first: rename(2) cannot replace a non-empty folder
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "x")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict | None = None) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def load_safetensors(path: str | Path, expected: dict[str, tuple[tuple, torch.dtype]] | None = None,
                     device: str = "cpu") -> dict[str, torch.Tensor]:
    """Load a safetensors file; with `expected` (name -> (shape, dtype)) refuse any mismatch by name."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing")
    try:
        state = load_file(str(path), device=device)
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{path} is not a readable safetensors file ({e}); delete it and rerun the step") from None
    if expected is not None:
        missing = sorted(set(expected) - set(state))
        extra = sorted(set(state) - set(expected))
        if missing or extra:
            raise ValueError(f"{path}: tensor names do not match (missing {missing}, unexpected {extra})")
        for k, (shape, dtype) in expected.items():
            if tuple(state[k].shape) != tuple(shape) or state[k].dtype != dtype:
                raise ValueError(f"{path}: tensor `{k}` is {tuple(state[k].shape)} {state[k].dtype}, "
                                 f"expected {tuple(shape)} {dtype}")
    return state
