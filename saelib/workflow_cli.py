"""`python -m saelib.workflow_cli ARGS`: Snakemake, made to recover on its own from an earlier run that was killed.

A killed Snakemake leaves its lock (`.snakemake/locks/`) and incomplete outputs behind; the next run then stops
until someone finds `--unlock` and `--rerun-incomplete`. This wrapper unlocks first when no other Snakemake is
running in this checkout (it never breaks the lock of a live run), and passes `--rerun-incomplete`, so `make
figures` and `make test` resume where a killed run stopped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .config import ROOT


def other_snakemake_running(workdir: Path = ROOT) -> bool | None:
    """Whether another Snakemake process works in `workdir` (None where /proc cannot tell)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    me = {os.getpid(), os.getppid()}
    for p in proc.iterdir():
        if not p.name.isdigit() or int(p.name) in me:
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if "snakemake" in cmd and "workflow_cli" not in cmd and Path(os.readlink(p / "cwd")) == workdir:
                return True
        except OSError:  # the process ended, or is not ours to read
            continue
    return False


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    snakemake = [sys.executable, "-m", "snakemake"]
    locks = ROOT / ".snakemake" / "locks"
    config = args[args.index("--config"):] if "--config" in args else []
    if locks.is_dir() and any(locks.iterdir()) and other_snakemake_running() is False:
        print("saelib: an earlier Snakemake run left its lock and no other runs here: unlocking", file=sys.stderr)
        subprocess.run([*snakemake, "--unlock", *config], cwd=ROOT, check=False, capture_output=True)
    extra = [] if {"--lint", "--unlock", "--report"} & set(args) else ["--rerun-incomplete"]
    return subprocess.run([*snakemake, *extra, *args], cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main())
