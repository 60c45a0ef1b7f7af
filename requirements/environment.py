"""Write environment.yml from requirements/lock.txt: the same exact versions for a conda environment (`make lock`
runs this). Conda installs Python and pip; pip installs torch (the CUDA build on a Linux machine with an NVIDIA GPU)
and every other package at the version the lock holds."""

import re
import sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent
torch = sys.argv[1] if len(sys.argv) > 1 else "torch==2.13.0"
pins = [m.group(1) for line in (root / "requirements" / "lock.txt").read_text().splitlines()
        if (m := re.match(r"^([A-Za-z0-9_.\-\[\]]+==[^\s\\;]+)", line))]
lines = ["# conda env create -f environment.yml && conda activate saelib",
         "# Generated from requirements/lock.txt by `make lock`: the exact versions `make install` uses. pip installs",
         "# torch from PyPI: the CUDA build on Linux (a GPU machine), the CPU build elsewhere.",
         "name: saelib", "channels:", "  - conda-forge", "dependencies:", "  - python=3.11", "  - pip", "  - pip:",
         f"      - {torch}", *[f"      - {p}" for p in pins], "      - -e ."]
(root / "environment.yml").write_text("\n".join(lines) + "\n")
print(f"environment.yml: {len(pins)} pinned packages + {torch}")
