"""Provenance: what produced an artifact (SPEC: every result must be true of the config that produced it).

Recorded in every `cfg.json` and `eval.json`, beside every table, in the metadata of every figure and in every
executed notebook: the git commit and whether the tree had uncommitted changes, the versions of saelib and the
libraries that move numbers, the device, torch's thread count, and the hash of the effective config.
"""

from __future__ import annotations

import datetime as dt
import functools
import importlib.metadata
import json
import subprocess

import torch

from .config import ROOT, ProfileConfig, config_hash

PACKAGES = ("saelib", "torch", "transformer-lens", "sae-lens", "numpy")
CODE = ("saelib", "config", "paper_nbs", "workflow", "Snakefile", "pyproject.toml", "requirements")
"""What makes results: a change there since the commit marks a record `uncommitted changes`."""


@functools.lru_cache(maxsize=1)
def git_state() -> dict:
    """The checkout's commit and whether it is dirty: tracked files that make results (the package, profiles,
    notebooks, workflow, dependency pins) changed since it; `unknown` outside git. Outputs (figures/) and prose do
    not count."""
    def git(*args):
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10)
    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"commit": "unknown", "dirty": None}
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", *CODE).stdout.strip() != ""
        return {"commit": head.stdout.strip(), "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}


def versions() -> dict:
    out = {}
    for p in PACKAGES:
        try:
            out[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            out[p] = None
    return out


def device_name(device: torch.device | str | None = None) -> str:
    device = torch.device(device or "cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return "cpu"


def provenance(cfg: ProfileConfig | None = None, device: torch.device | str | None = None) -> dict:
    """The provenance record of an artifact made now, by this process, from `cfg`."""
    rec = {**git_state(), "versions": versions(), "device": device_name(device), "threads": torch.get_num_threads(),
           "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    if cfg is not None:
        rec |= {"profile": cfg.name, "variant": cfg.variant, "config_hash": config_hash(cfg.effective())}
    return rec


def one_line(rec: dict) -> str:
    """A provenance record as one line for captions and figure metadata."""
    v = rec.get("versions", {})
    dirty = " (uncommitted changes)" if rec.get("dirty") else ""
    return (f"saelib {v.get('saelib')} @ {str(rec.get('commit'))[:10]}{dirty}; torch {v.get('torch')}, "
            f"transformer-lens {v.get('transformer-lens')}, sae-lens {v.get('sae-lens')}; {rec.get('device')}, "
            f"{rec.get('threads')} threads; config {rec.get('config_hash', '-')}")


def as_json(rec: dict) -> str:
    return json.dumps(rec, sort_keys=True)


def stamp_notebook(path: str) -> dict:
    """Write the provenance record into an executed notebook's metadata (`metadata.saelib`), from the profile
    and overrides papermill gave it."""
    from .config import load_profile
    from .io import atomic_write_text

    with open(path, encoding="utf-8") as fh:
        nb = json.load(fh)
    params = nb.get("metadata", {}).get("papermill", {}).get("parameters", {})
    cfg = None
    if params.get("profile"):
        cfg = load_profile(params["profile"], [s for s in str(params.get("overrides", "")).split(",") if s])
    rec = provenance(cfg) | {"parameters": params}
    nb.setdefault("metadata", {})["saelib"] = rec
    atomic_write_text(path, json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return rec


if __name__ == "__main__":  # python -m saelib.provenance EXECUTED_NOTEBOOK
    import sys

    print(one_line(stamp_notebook(sys.argv[1])))
