"""Tables 1 and 2 of a GPU run against the CPU ones (bench/gpu.sh, issue 17): the same comparison nbval makes
(numbers within 5%, feature counts within 8), and the largest relative difference of each metric.
Usage: python bench/gpu_tables.py PROFILE RESULTS_DIR TAG OUT_DIR [KEY=VALUE ...]  (the overrides the run was made with)"""

import sys
from pathlib import Path

import pandas as pd

from saelib import tables
from saelib.config import ROOT
from saelib.study import open_study

profile, results, tag, out = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])
out.mkdir(parents=True, exist_ok=True)
study = open_study(profile, str(out / f"tables_{profile}_{tag}"), ",".join([f"out_dir={results}", *sys.argv[5:]]))
cpu = {"table01_summary": ROOT / "paper_nbs" / "recorded" / "table01_summary_smoke.csv"} if profile == "smoke" else {
    "table01_summary": ROOT / "figures" / profile / "table01_summary.csv",
    "table02_ablations": ROOT / "figures" / profile / "table02_ablations.csv"}
made = {"table01_summary": tables.summary_table(study), "table02_ablations": tables.ablation_table(study)}
for name, path in cpu.items():
    gpu = made[name]
    gpu.to_csv(out / f"{name}_{profile}_{tag}.csv")
    if not path.exists():
        print(f"{profile} {tag} {name}: no CPU table at {path}")
        continue
    ref = pd.read_csv(path, index_col=0)
    print(f"{profile} {tag} {name} against the CPU table: {tables.compare_tables(gpu, ref).splitlines()[0]}")
    num = [c for c in ref.columns if c in gpu.columns and not c.endswith("_std") and pd.api.types.is_float_dtype(ref[c])]
    rel = ((gpu.loc[ref.index, num] - ref[num]).abs() / ref[num].abs().clip(lower=1e-12)).max()
    print("  largest relative difference: " + ", ".join(f"{k} {v:.3%}" for k, v in rel.items()))
