"""Benchmarks (measurements, not tests): `python -m saelib.bench [--quick] [--only step,group,acts,rules]`.

  step   one SAE: saelib's full training step (forward, every term of the new loss, backward, decoder projection,
         Adam, renormalisation: `SAEStack.step`, the trainer's own) against sae-lens's `SAETrainer.step` on the
         same shapes, batch and dtype, interleaved A/B over repeated trials (median ratio of tokens/s), and against
         the five matrix products a step cannot avoid.
  group  N SAEs on one shared batch: saelib's stacked step against sae-lens's `MultiSAETrainer` (one trainer per
         SAE, stepped one after another on the same batch) and against N x the five-matmul floor; throughput per
         SAE; peak memory of each (a fresh process per measurement: peak RSS on CPU, peak allocated on CUDA).
  acts   activations at blocks.1.hook_resid_pre: the stop_at_layer source against a full forward pass, for the tiny
         LM architecture and a random-weight GPT-2-sized model.
  rules  wall time of each workflow rule of a profile, from Snakemake's benchmark files.

Each table is printed and appended to bench/RESULTS.md with the date, machine, torch version and shapes. On CUDA,
`--dtypes float32,tf32,bf16` repeats the step and group tables per precision.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from .config import RunConfig, TrainConfig
from .kernels import keep_freed_memory, use_compile
from .stack import SAEStack

RESULTS = Path(__file__).resolve().parent.parent / "bench" / "RESULTS.md"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {torch.get_num_threads()} threads, {gpu}, torch {torch.__version__}"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timeit(fn, device, iters: int) -> float:
    """Seconds per call, after one warm-up call."""
    fn()
    sync(device)
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - t) / iters


def set_precision(precision: str) -> tuple[torch.dtype, bool]:
    """float32 / tf32 / bf16 -> (parameter dtype, bf16 autocast); TF32 matmuls only for `tf32`."""
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    return torch.float32, precision == "bf16"


# ---- what is timed ----

BENCH_RUN = RunConfig(sparsity="l0approx", lambda_sparsity=5e-5, lambda_min=1e-6)


def saelib_group(R: int, D: int, F: int, B: int, device, precision: str = "float32"):
    """The trainer's own stacked step (`SAEStack.step`) of R new-loss SAEs on one random batch."""
    _, autocast = set_precision(precision)
    run = dataclasses.replace(BENCH_RUN, expansion=F // D)
    stack = SAEStack([f"r{i}" for i in range(R)], [run] * R, D, TrainConfig(lr=4e-4, batch_tokens=B), device)
    x = torch.randn(B, D, device=device) * 10
    return lambda: stack.step(x, 4e-4, autocast=autocast)


def saelib_step(D: int, F: int, B: int, device, precision: str = "float32"):
    return saelib_group(1, D, F, B, device, precision)


def sae_lens_group(R: int, D: int, F: int, B: int, device, precision: str = "float32"):
    """sae-lens's MultiSAETrainer holding R standard (L1) training SAEs, stepped on our batch: each step calls
    every SAE's `SAETrainer.step` in turn, as its `fit()` does."""
    from sae_lens import LoggingConfig, StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.multi_sae_trainer import MultiSAETrainer

    _, autocast = set_precision(precision)
    cfg = SAETrainerConfig(total_training_samples=10**9, train_batch_size_samples=B, lr=4e-4, lr_end=4e-4,
                           device=str(device), autocast=autocast, logger=LoggingConfig(log_to_wandb=False))
    saes = {f"r{i}": StandardTrainingSAE(StandardTrainingSAEConfig(d_in=D, d_sae=F, device=str(device),
                                                                   l1_coefficient=5.0)) for i in range(R)}
    x = torch.randn(B, D, device=device) * 10
    mt = MultiSAETrainer(cfg=cfg, saes=saes, hook_names={k: "acts" for k in saes}, data_provider=iter(()))

    def step():
        for t in mt.trainers.values():
            t.step(x)
            t.n_training_steps += 1
    return step


def floor_group(R: int, D: int, F: int, B: int, device, precision: str = "float32"):
    """R x the five products a step cannot avoid: x W_enc, f W_dec, g W_dec^T, f^T g, x^T g_pre (batched)."""
    set_precision(precision)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    x = torch.randn(R, B, D, device=device, dtype=dtype)
    W_enc = torch.randn(R, D, F, device=device, dtype=dtype)
    W_dec = torch.randn(R, F, D, device=device, dtype=dtype)
    f = torch.randn(R, B, F, device=device, dtype=dtype)
    g = torch.randn(R, B, D, device=device, dtype=dtype)
    g_pre = torch.randn(R, B, F, device=device, dtype=dtype)

    def step():
        torch.bmm(x, W_enc)
        torch.bmm(f, W_dec)
        torch.bmm(g, W_dec.transpose(1, 2))
        torch.bmm(f.transpose(1, 2), g)
        torch.bmm(x.transpose(1, 2), g_pre)
    return step


def floor_step(D: int, F: int, B: int, device, precision: str = "float32"):
    return floor_group(1, D, F, B, device, precision)


MAKERS = {"saelib": saelib_group, "sae-lens": sae_lens_group, "floor": floor_group}


def ab(fa, fb, device, trials: int, iters: int) -> tuple[float, float, float]:
    """Interleaved trials; returns (median seconds of a, median seconds of b, median of b/a per trial)."""
    ta, tb, ratio = [], [], []
    for _ in range(trials):
        a = timeit(fa, device, iters)
        b = timeit(fb, device, iters)
        ta.append(a)
        tb.append(b)
        ratio.append(b / a)
    return statistics.median(ta), statistics.median(tb), statistics.median(ratio)


# ---- memory: one measurement per fresh process ----

def peak_memory(kind: str, R: int, D: int, F: int, B: int, device: str, precision: str, steps: int = 3) -> float:
    """Peak memory (MB) of `steps` steps of one implementation: on CUDA the peak allocated in this process (reset
    first); on CPU the peak resident set of a fresh process."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn = MAKERS[kind](R, D, F, B, torch.device(device), precision)
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        del fn
        torch.cuda.empty_cache()
        return peak
    r = subprocess.run([sys.executable, "-m", "saelib.bench", "--memory-probe", json.dumps(
        [kind, R, D, F, B, device, precision, steps])], capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        return float("nan")
    return float(r.stdout.strip().splitlines()[-1])


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _memory_probe(spec: str) -> None:
    kind, R, D, F, B, device, precision, steps = json.loads(spec)
    device = torch.device(device)
    keep_freed_memory()
    if device.type == "cpu":  # reset the resident-set high-water mark to now (after the imports)
        Path("/proc/self/clear_refs").write_text("5")
    base = _status_kb("VmRSS") if device.type == "cpu" else 0
    fn = MAKERS[kind](R, D, F, B, device, precision)
    for _ in range(steps):
        fn()
    sync(device)
    if device.type == "cuda":
        print(torch.cuda.max_memory_allocated() / 2**20)
    else:
        print((_status_kb("VmHWM") - base) / 1024)


# ---- the tables ----

def shapes(device, quick: bool) -> tuple[list, list]:
    """(single-SAE shapes, group shapes) as (R, d_in, d_sae, batch)."""
    if device.type == "cuda":
        return ([(1, 128, 1024, 4096), (1, 768, 6144, 4096), (1, 768, 24576, 4096)],
                [(28, 128, 1024, 2048), (5, 768, 6144, 4096), (5, 768, 24576, 4096), (15, 768, 24576, 4096)])
    small = 256 if not quick else 128
    return ([(1, 128, 1024, 2048), (1, 768, 6144, small), (1, 768, 24576, small)],
            [(28, 128, 1024, 2048), (5, 768, 6144, small)])


def bench_table(device, quick: bool, which: str, precision: str, memory: bool) -> list[str]:
    trials, iters = (3, 2) if quick else (5, 3)
    single, group = shapes(device, quick)
    rows = ["| SAEs x (d_in, d_sae), batch | saelib tok/s per SAE | sae-lens tok/s per SAE | saelib vs sae-lens | "
            "floor tok/s per SAE | saelib / floor time | peak MB saelib / sae-lens / floor |",
            "|---|---|---|---|---|---|---|"]
    for R, D, F, B in (single if which == "step" else group):
        if device.type == "cuda" and R * F * B * 4 * 6 > 0.8 * torch.cuda.get_device_properties(0).total_memory:
            rows.append(f"| {R} x ({D}, {F}), {B} | (does not fit this GPU) | | | | | |")
            continue
        ours = saelib_group(R, D, F, B, device, precision)
        theirs = sae_lens_group(R, D, F, B, device, precision)
        floor = floor_group(R, D, F, B, device, precision)
        t_ours, t_theirs, r = ab(ours, theirs, device, trials, iters)
        _, t_floor, r_floor = ab(ours, floor, device, trials, iters)
        del ours, theirs, floor
        mem = "/".join(f"{peak_memory(k, R, D, F, B, str(device), precision):,.0f}" for k in MAKERS) if memory else "-"
        rows.append(f"| {R} x ({D}, {F}), {B} | {B / t_ours:,.0f} | {B / t_theirs:,.0f} | {r:.2f}x | "
                    f"{B / t_floor:,.0f} | {1 / r_floor:.2f}x | {mem} |")
        print(rows[-1], flush=True)
    return rows


def bench_acts(device, quick: bool) -> list[str]:
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from .activations import hook_activations

    rows = ["| model | batch x context | hook source tok/s | full forward tok/s | speed-up |", "|---|---|---|---|---|"]
    models = {
        "tiny LM (2 layers, d 128, vocab 2048)": dict(n_layers=2, d_model=128, n_heads=4, d_head=32, d_mlp=512,
                                                      d_vocab=2048),
        "GPT-2-sized, random weights (12 layers, d 768)": dict(n_layers=12, d_model=768, n_heads=12, d_head=64,
                                                               d_mlp=3072, d_vocab=50257),
    }
    trials, iters = (3, 1) if quick else (5, 2)
    for name, kw in models.items():
        model = HookedTransformer(HookedTransformerConfig(n_ctx=128, act_fn="gelu_new", seed=0, **kw)).to(device).eval()
        n = 64 if device.type == "cuda" else 8
        toks = torch.randint(0, kw["d_vocab"], (n, 128), device=device)
        with torch.no_grad():
            t_hook, t_full, r = ab(lambda: hook_activations(model, toks, "blocks.1.hook_resid_pre"),
                                   lambda: model(toks), device, trials, iters)
        rows.append(f"| {name} | {n} x 128 | {n * 128 / t_hook:,.0f} | {n * 128 / t_full:,.0f} | {r:.1f}x |")
        print(rows[-1], flush=True)
    return rows


def bench_rules(profile: str, folder: Path | None = None) -> list[str]:
    folder = folder or Path(__file__).resolve().parent.parent / "results" / profile / "benchmarks"
    files = sorted(folder.glob("*.tsv"))
    if not files:
        return [f"(no Snakemake benchmark files under {folder}: run `make figures PROFILE={profile}` first)"]
    rows = [f"| rule ({profile}) | wall s |", "|---|---|"]
    total = 0.0
    for f in files:
        s = float(f.read_text().splitlines()[1].split("\t")[0])
        total += s
        rows.append(f"| {f.stem} | {s:.1f} |")
    rows.append(f"| **sum** | {total:.1f} |")
    return rows


def append_results(sections: list[tuple[str, list[str]]], note: str = "") -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    head = f"\n## {dt.datetime.now().strftime('%Y-%m-%d %H:%M')} — {machine()}{note}\n"
    body = "".join(f"\n### {title}\n\n" + "\n".join(rows) + "\n" for title, rows in sections)
    with open(RESULTS, "a") as fh:
        fh.write(head + body)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m saelib.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="step,group,acts,rules", help="comma-separated: step, group, acts, rules")
    p.add_argument("--profile", default="tiny", help="profile whose rule timings to report")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtypes", default="float32", help="CUDA: comma-separated float32, tf32, bf16")
    p.add_argument("--quick", action="store_true", help="fewer trials and smaller CPU batches")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    p.add_argument("--no-record", action="store_true", help="print only; do not append to bench/RESULTS.md")
    p.add_argument("--eager", action="store_true",
                   help="saelib's elementwise kernels eager (default: compiled, as the trainer runs them)")
    p.add_argument("--memory-probe", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_probe:
        _memory_probe(args.memory_probe)
        return 0
    keep_freed_memory()  # as the training CLI does
    compiled = use_compile(not args.eager)  # as train.compile (default on) does
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    print(f"{machine()}; saelib kernels {'compiled' if compiled else 'eager'}", flush=True)
    sections = []
    only = set(args.only.split(","))
    for precision in args.dtypes.split(","):
        for which, title in (("step", "One SAE: training step, saelib vs sae-lens, and vs the matmul floor"),
                             ("group", "A group of SAEs on one batch: saelib's stack vs sae-lens's MultiSAETrainer")):
            if which in only:
                sections.append((f"{title} ({precision})",
                                 bench_table(device, args.quick, which, precision, not args.no_memory)))
    if "acts" in only:
        sections.append(("Activations at blocks.1.hook_resid_pre", bench_acts(device, args.quick)))
    if "rules" in only:
        sections.append((f"Workflow rules, profile {args.profile}", bench_rules(args.profile)))
    for title, rows in sections:
        print(f"\n{title}\n" + "\n".join(rows))
    if not args.no_record:
        append_results(sections, f"; saelib kernels {'compiled' if compiled else 'eager'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
