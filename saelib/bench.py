"""Benchmarks (measurements, not tests): `python -m saelib.bench [--quick] [--only step,floor,acts,rules]`.

  step   saelib's full training step (forward, every term of the new loss, backward, decoder projection,
         Adam, renormalisation) against sae-lens's standard training SAE step, same shapes, batch and
         dtype, interleaved A/B over repeated trials; the median ratio of tokens/s.
  floor  the five matrix products a step cannot avoid, timed alone; saelib's step time / floor time.
  acts   activations at blocks.1.hook_resid_pre: our stop_at_layer source against a full forward pass,
         for the tiny LM architecture and a random-weight GPT-2-sized model.
  rules  wall time of each workflow rule of a profile, from Snakemake's benchmark files.

Each table is printed and appended to bench/RESULTS.md with the date, machine, torch version and shapes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import time
from pathlib import Path

import torch

from .config import RunConfig, TrainConfig
from .kernels import keep_freed_memory
from .sae import SAE
from .sparsity import SparsityTracker
from .train import make_optimizer, train_step

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


# ---- a. the training step ----

def saelib_step(D: int, F: int, B: int, device, dtype=torch.float32):
    """The trainer's own step (train.train_step, train.make_optimizer) on random activations."""
    run = RunConfig(sparsity="l0approx", lambda_sparsity=5e-5, lambda_min=1e-6)
    sae = SAE(D, F).to(device, dtype)
    tracker = SparsityTracker(F, run.window(B), device)
    opt = make_optimizer(sae, TrainConfig(lr=4e-4))
    x = torch.randn(B, D, device=device, dtype=dtype) * 10
    return lambda: train_step(run, sae, tracker, opt, x)


def sae_lens_step(D: int, F: int, B: int, device, dtype=torch.float32):
    from sae_lens import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput

    cfg = StandardTrainingSAEConfig(d_in=D, d_sae=F, dtype=str(dtype).split(".")[-1], device=str(device),
                                    l1_coefficient=5.0)
    sae = StandardTrainingSAE(cfg).to(device)
    opt = torch.optim.Adam(sae.parameters(), lr=4e-4)
    x = torch.randn(B, D, device=device, dtype=dtype) * 10
    counter = [0]

    def step():
        out = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients={"l1": 5.0}, dead_neuron_mask=None,
                                                       n_training_steps=counter[0], is_logging_step=False))
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        counter[0] += 1
    return step


def floor_step(D: int, F: int, B: int, device, dtype=torch.float32):
    """The five unavoidable products: x W_enc, f W_dec, g W_dec^T, f^T g, x^T g_pre."""
    x = torch.randn(B, D, device=device, dtype=dtype)
    W_enc = torch.randn(D, F, device=device, dtype=dtype)
    W_dec = torch.randn(F, D, device=device, dtype=dtype)
    f = torch.randn(B, F, device=device, dtype=dtype)
    g = torch.randn(B, D, device=device, dtype=dtype)
    g_pre = torch.randn(B, F, device=device, dtype=dtype)

    def step():
        x @ W_enc
        f @ W_dec
        g @ W_dec.T
        f.T @ g
        x.T @ g_pre
    return step


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


def shapes(device, quick: bool):
    if device.type == "cuda":
        return [(128, 1024, 4096), (768, 6144, 4096), (768, 24576, 4096)]
    small = 256 if not quick else 128
    return [(128, 1024, 2048), (768, 6144, small), (768, 24576, small)]


def bench_step(device, quick: bool) -> list[str]:
    trials, iters = (3, 3) if quick else (7, 5)
    rows = ["| shape (d_in, d_sae, batch) | saelib tok/s | sae-lens tok/s | speed-up (median of trials) | "
            "floor tok/s | saelib / floor time |", "|---|---|---|---|---|---|"]
    for D, F, B in shapes(device, quick):
        ours, theirs, floor = saelib_step(D, F, B, device), sae_lens_step(D, F, B, device), floor_step(D, F, B, device)
        t_ours, t_theirs, r = ab(ours, theirs, device, trials, iters)
        t_ours2, t_floor, r_floor = ab(ours, floor, device, trials, iters)
        rows.append(f"| {D}, {F}, {B} | {B / t_ours:,.0f} | {B / t_theirs:,.0f} | {r:.2f}x | {B / t_floor:,.0f} | "
                    f"{1 / r_floor:.2f}x |")
        print(rows[-1], flush=True)
    return rows


# ---- c. activations ----

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


# ---- d. workflow rules ----

def bench_rules(profile: str, folder: Path | None = None) -> list[str]:
    folder = folder or Path("results") / profile / "benchmarks"
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


def append_results(sections: list[tuple[str, list[str]]]) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    head = f"\n## {dt.datetime.now().strftime('%Y-%m-%d %H:%M')} — {machine()}\n"
    body = "".join(f"\n### {title}\n\n" + "\n".join(rows) + "\n" for title, rows in sections)
    with open(RESULTS, "a") as fh:
        fh.write(head + body)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m saelib.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="step,acts,rules", help="comma-separated: step (includes floor), acts, rules")
    p.add_argument("--profile", default="tiny", help="profile whose rule timings to report")
    p.add_argument("--device", default="auto")
    p.add_argument("--quick", action="store_true", help="fewer trials and smaller CPU batches")
    p.add_argument("--no-record", action="store_true", help="print only; do not append to bench/RESULTS.md")
    args = p.parse_args(argv)
    keep_freed_memory()  # as the training CLI does
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    print(machine(), flush=True)
    sections = []
    only = set(args.only.split(","))
    if "step" in only:
        sections.append(("a/b. Training step: saelib vs sae-lens, and vs the matmul floor (float32)",
                         bench_step(device, args.quick)))
    if "acts" in only:
        sections.append(("c. Activations at blocks.1.hook_resid_pre", bench_acts(device, args.quick)))
    if "rules" in only:
        sections.append((f"d. Workflow rules, profile {args.profile}", bench_rules(args.profile)))
    for title, rows in sections:
        print(f"\n{title}\n" + "\n".join(rows))
    if not args.no_record:
        append_results(sections)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
