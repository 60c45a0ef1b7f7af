"""Artifacts on disk: atomic writes, checksums, and loads whose errors name the file and the step that makes it.

Every artifact is written to a temporary name in the same folder and renamed into place, so a killed
process never leaves a file that a later step could take as complete; a run folder is published whole
(`atomic_dir`). Tensors go through safetensors only (no pickle), read into memory (no mapping is held on a
file that may be replaced), with a sha256 of their bytes in the file's metadata; JSON artifacts carry the
sha256 of their content in a `sha256` field. Both are verified on load.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save_file

_UMASK = os.umask(0)
os.umask(_UMASK)
TMP_SUFFIXES = (".tmp", ".old")  # what atomic writes leave behind when killed (see `remove_orphans`)


class ArtifactError(ValueError):
    """An artifact exists but is truncated, corrupt, of another shape or of another config."""


def rerun_hint(made_by: str | None) -> str:
    return f"; rerun the step that makes it: `{made_by}`" if made_by else ""


# ---- atomic writes ----

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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700 folders
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
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


def remove_orphans(folder: str | Path) -> list[Path]:
    """Delete what interrupted atomic writes left in `folder` (`.<name>.*.tmp` files and folders, `.old`
    folders). Called when a step starts; returns what it removed."""
    folder = Path(folder)
    gone = []
    if folder.is_dir():
        for p in folder.iterdir():
            if p.name.startswith(".") and p.name.endswith(TMP_SUFFIXES):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                gone.append(p)
    return gone


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


# ---- checksums ----

def json_digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes of the tensors, in name order."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data if t.numel() else b"")
    return h.hexdigest()


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---- JSON ----

def atomic_write_json(path: str | Path, obj: dict, checksum: bool = True) -> None:
    """Write `obj` with a `sha256` field holding the digest of the rest (verified by `read_json`)."""
    obj = json.loads(json.dumps(obj, default=str))  # plain data: what will be read back
    obj.pop("sha256", None)
    if checksum:
        obj["sha256"] = json_digest(obj)
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path, made_by: str | None = None, keys: tuple[str, ...] = (), verify: bool = True) -> dict:
    """A JSON artifact: missing, unreadable, truncated, checksum mismatch or missing `keys` are errors that
    name the file and what makes it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing{rerun_hint(made_by)}")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path} is truncated or corrupt (not valid JSON: {e}){rerun_hint(made_by)}") from None
    if not isinstance(obj, dict):
        raise ArtifactError(f"{path} is corrupt (expected a JSON object){rerun_hint(made_by)}")
    if verify and "sha256" in obj:
        want = obj.pop("sha256")
        if json_digest(obj) != want:
            raise ArtifactError(f"{path} fails its checksum (its content changed after it was written)"
                                f"{rerun_hint(made_by)}")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise ArtifactError(f"{path} lacks {', '.join(missing)} (written by another version?){rerun_hint(made_by)}")
    return obj


# ---- tensors ----

def save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict | None = None) -> None:
    # views (a run's slice of a stack) and tensors named twice are copied: safetensors refuses shared memory
    out, seen = {}, set()
    for k, v in tensors.items():
        v = v.detach().cpu()
        if v._base is not None or not v.is_contiguous() or v.data_ptr() in seen:
            v = v.clone()
        seen.add(v.data_ptr())
        out[k] = v
    tensors = out
    meta = {**(metadata or {}), "sha256": tensor_digest(tensors)}
    with atomic_path(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata=meta)
        except Exception as e:  # safetensors reports OS errors (a full disk) as its own error type
            if "os error 28" in str(e) or "No space left" in str(e):
                raise OSError(errno.ENOSPC, f"No space left on device while writing {path}") from None
            raise OSError(f"could not write {path}: {e}") from None


def read_safetensors_metadata(path: str | Path) -> dict:
    """The metadata header of a safetensors file (its first 8 bytes give the header's length)."""
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        return json.loads(fh.read(n)).get("__metadata__", {}) or {}


def load_safetensors(path: str | Path, expected: dict[str, tuple[tuple, torch.dtype]] | None = None,
                     device: str = "cpu", made_by: str | None = None) -> dict[str, torch.Tensor]:
    """Load a safetensors file into memory, verify its checksum, and with `expected` (name -> (shape, dtype))
    refuse any mismatch by name."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing{rerun_hint(made_by)}")
    try:
        raw = path.read_bytes()
        state = st_load(raw)
        meta = read_safetensors_metadata(path)
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise ArtifactError(f"{path} is truncated or corrupt ({type(e).__name__}: {e}){rerun_hint(made_by)}") from None
    want = meta.get("sha256")
    if want is not None and tensor_digest(state) != want:
        raise ArtifactError(f"{path} fails its checksum (its bytes changed after it was written){rerun_hint(made_by)}")
    if expected is not None:
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        if missing or extra:
            raise ArtifactError(f"{path}: tensor names do not match (missing {missing}, unexpected {extra})"
                                f"{rerun_hint(made_by)}")
        for k, (shape, dtype) in expected.items():
            if tuple(state[k].shape) != tuple(shape) or state[k].dtype != dtype:
                raise ArtifactError(f"{path}: tensor `{k}` is {tuple(state[k].shape)} {state[k].dtype}, "
                                    f"expected {tuple(shape)} {dtype}{rerun_hint(made_by)}")
    return {k: v.to(device) for k, v in state.items()} if device != "cpu" else state


# ---- numpy arrays ----

def save_npy(path: str | Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array, allow_pickle=False)


def load_npy(path: str | Path, made_by: str | None = None, sha256: str | None = None) -> np.ndarray:
    """A saved token array (never pickled objects); with `sha256` (from the step's info.json) verified."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing{rerun_hint(made_by)}")
    if sha256 is not None and file_digest(path) != sha256:
        raise ArtifactError(f"{path} fails its checksum (its bytes changed after it was written){rerun_hint(made_by)}")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as e:  # ValueError for a truncated file or a garbled header, EOFError for an empty one
        raise ArtifactError(f"{path} is truncated or corrupt (not a readable .npy array: {type(e).__name__})"
                            f"{rerun_hint(made_by)}") from None
