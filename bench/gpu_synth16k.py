"""synth16k on a GPU (bench/gpu.sh, issue 17): build the standard world, time sampling, and time its whole training
group (every run of the profile, one process) for a few hundred steps, to project the profile's cost.
Usage: python bench/gpu_synth16k.py OUT_DIR [KEY=VALUE ...]   (overrides: a small world for a dry run on a CPU)"""

import os
import sys
import time

import torch

from saelib.config import load_profile
from saelib.kernels import keep_freed_memory
from saelib.synthetic import prepare
from saelib.train import Trainer

keep_freed_memory()
steps = int(os.environ.get("STEPS", 200))
cfg = load_profile("synth16k", [f"out_dir={os.environ.get('SYNTH_DIR', '/tmp/synth16k')}", f"train.tokens={1024 * steps}",
                                "train.log_every=50", "train.checkpoint_every=1000000", *sys.argv[2:]])
cuda = torch.cuda.is_available()
sync = torch.cuda.synchronize if cuda else (lambda: None)
t0 = time.time()
info = prepare(cfg)
print(f"synth16k world built and saved on {torch.cuda.get_device_name(0) if cuda else 'CPU'} in "
      f"{time.time() - t0:.1f} s; true L0 {info['true_l0']:.1f}")
tr = Trainer(cfg, cfg.run_names, progress=False)
x = [tr.source.next_batch(1024) for _ in range(3)]
sync()
t0 = time.time()
for _ in range(20):
    tr.source.next_batch(1024)
sync()
sample_s = (time.time() - t0) / 20
print(f"sampling 1024 samples: {sample_s * 1e3:.1f} ms")
tr.source.batch = 0
t0 = time.time()
tr.train()
total = time.time() - t0
# the step time of the whole group after warm-up (compilation): each run's logged `seconds` is its share of its
# stack's step time; between the logs at step 50 and the last step
rows = {n: {r["step"]: r["seconds"] for r in tr.rows[n]} for n in cfg.run_names}
last = max(rows[cfg.run_names[0]])
group_s = sum(r[last] - r[50] for r in rows.values()) / (last - 50)
n_steps = 200_000_000 // 1024
per_step = group_s + sample_s
width = cfg.run(cfg.run_names[0]).d_sae(cfg.synthetic.hidden_dim)
print(f"{len(cfg.run_names)} SAEs ({width} latents), {steps} steps in one process: {total:.1f} s wall with start-up; "
      f"after warm-up {group_s * 1e3:.1f} ms per step for the group + {sample_s * 1e3:.1f} ms sampling; projected for "
      f"200M samples ({n_steps:,} steps): {n_steps * per_step / 3600:.1f} h for all {len(cfg.run_names)} SAEs "
      f"({n_steps * per_step / 3600 / len(cfg.run_names) * 60:.1f} min per SAE)")
