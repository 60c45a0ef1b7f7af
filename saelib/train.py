"""The SAE trainer: a group of runs trained in lockstep on one shared activation stream, as one stacked model per
width (`stack.SAEStack`); named loss terms logged every `log_every` steps to `metrics.csv`; checkpoints every
`checkpoint_every` steps; a progress bar (or a progress line every minute in logs).

The stream depends only on the profile seed and each SAE's initialisation only on its run name and seed, and
the runs of a stack share no parameter, so a run ends as it would alone (tests/test_train.py).

Checkpoints: `<root>/checkpoints/<group>/ckpt-<step>.safetensors` (every run's weights, Adam moments and tracker
state; the unserved buffer and its generator) plus `latest.json` (step, stream position, logged rows, every
run's training settings), written last: a checkpoint exists once `latest.json` points at it. The previous
checkpoint is kept until a step after the new one has run with finite losses, so the checkpoint that the
divergence message names is one whose weights are finite and trained on (the "last good" one).

A run is complete when its folder exists: weights, `cfg.json` and `metrics.csv` are written into a temporary
folder that is renamed into place in one step.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import shutil
import sys
import time
import zlib
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .activations import ActivationBuffer
from .archs import SaeLensRun
from .config import ProfileConfig, config_diff
from .io import (
    ArtifactError,
    atomic_dir,
    atomic_write_json,
    atomic_write_text,
    file_digest,
    load_safetensors,
    read_json,
    remove_orphans,
    save_safetensors,
)
from .kernels import use_compile
from .lm import check_hook, load_lm, pick_device
from .provenance import provenance
from .stack import SAEStack, init_seed


class TrainingDiverged(FloatingPointError):
    """NaN or Inf in the activations, a loss term, or an SAE's weights."""


def make_source(cfg: ProfileConfig, device: torch.device):
    """(the activation source of the profile, d_in): the LM's activations at the hook through a shuffled buffer,
    or the synthetic model's samples."""
    if cfg.synthetic_source:
        from .synthetic import SyntheticSource

        source = SyntheticSource(cfg, device)
        return source, source.d_in
    model, tok = load_lm(cfg, device)
    check_hook(model, cfg.activations.hook)
    for p in model.parameters():
        p.requires_grad_(False)
    return ActivationBuffer(model, cfg, device, bos_id=tok.bos_id), model.cfg.d_model


def geometric_median(x_ND: torch.Tensor, iters: int = 100, tol: float = 1e-6) -> torch.Tensor:
    """Weiszfeld's algorithm: the point minimising the sum of Euclidean distances to the rows of x."""
    x = x_ND.double()
    m = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - m).norm(dim=1).clamp_min(1e-8)
        new = (w[:, None] * x).sum(0) / w.sum()
        if (new - m).norm() <= tol * m.norm().clamp_min(1e-12):
            m = new
            break
        m = new
    return m.to(x_ND.dtype)


def metrics_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def group_id(names: list[str]) -> str:
    """Checkpoint folder name of a group: the run's own name for one run, a hash of the names otherwise."""
    return names[0] if len(names) == 1 else f"group-{zlib.crc32(chr(10).join(names).encode()):08x}"


def run_is_complete(cfg: ProfileConfig, name: str) -> bool:
    """Whether the run's folder holds a finished run of exactly the current training settings."""
    try:
        meta = read_json(cfg.run_dir(name) / "cfg.json", keys=("train_hash",))
    except (FileNotFoundError, ArtifactError):
        return False
    return meta["train_hash"] == cfg.stage_hash("train", name) and (cfg.run_dir(name) / "metrics.csv").exists()


class Trainer:
    """Trains one run, or a group of runs on one shared activation stream, in lockstep."""

    def __init__(self, cfg: ProfileConfig, run_names: str | list[str], progress: bool = True):
        names = [run_names] if isinstance(run_names, str) else list(run_names)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"a training group needs distinct run names, got {names}")
        self.cfg, self.names, self.progress = cfg, names, progress
        for n in names:
            cfg.run(n)  # ConfigError for an unknown name, before the LM loads
        roots = {cfg.stage_root("train", n) for n in names}
        self.ckpt_dir = (roots.pop() if len(roots) == 1 else cfg.out) / "checkpoints" / group_id(names)
        for folder in {cfg.run_dir(n).parent for n in names} | {self.ckpt_dir}:
            remove_orphans(folder)  # temp files of writes a kill interrupted
        self.device = pick_device(cfg.train.device)
        self.compiled = use_compile(cfg.train.compile)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = cfg.train.tf32
            torch.backends.cudnn.allow_tf32 = cfg.train.tf32
        self.source, d_in = make_source(cfg, self.device)
        # this package's SAEs: one stack per width, runs in group order within each; sae-lens architectures: one
        # member per run
        by_width: dict[int, list[str]] = {}
        for n in names:
            if cfg.run(n).architecture == "relu":
                by_width.setdefault(cfg.run(n).d_sae(d_in), []).append(n)
        self.stacks = [SAEStack(ns, [cfg.run(n) for n in ns], d_in, cfg.train, self.device) for ns in by_width.values()]
        self.stacks += [SaeLensRun(n, cfg.run(n), d_in, cfg.train, self.device, init_seed(n, cfg.run(n).seed))
                        for n in names if cfg.run(n).architecture != "relu"]
        self.autocast = self.device.type == "cuda" and cfg.train.autocast_bf16
        self.rows: dict[str, list[dict]] = {n: [] for n in names}
        self.seconds: dict[str, float] = {n: 0.0 for n in names}  # training time per run (its share of its stack)
        self.step = 0
        self.unconfirmed = False  # a checkpoint was written or loaded and no step has run from it yet

    def where(self, name: str) -> tuple[SAEStack, int]:
        for s in self.stacks:
            if name in s.names:
                return s, s.names.index(name)
        raise KeyError(name)

    def sae(self, name: str | None = None):
        """A run's SAE (a copy of its slice of the stack); the only run's by default."""
        if name is None and len(self.names) != 1:
            raise ValueError("this trainer holds several SAEs: name one")
        stack, i = self.where(name or self.names[0])
        return stack.sae(i)

    # ---- checkpoints ----

    def settings(self) -> dict:
        """What a checkpoint must match to be resumed: every run's training settings (SPEC stage `train`)."""
        return {n: self.cfg.stage_config("train", n) for n in self.names}

    def latest_checkpoint(self) -> dict | None:
        path = self.ckpt_dir / "latest.json"
        if not path.exists():
            return None
        return read_json(path, f"delete the folder {self.ckpt_dir} to start afresh",
                         keys=("step", "tensors", "stream", "settings", "rows"))

    def save_checkpoint(self) -> None:
        """Checkpoint the state before step `self.step` (previous checkpoints are removed once a step after this
        one has run finitely: `confirm_checkpoint`)."""
        for s in self.stacks:
            ok = s.finite()
            if not bool(ok.all()):
                bad = [n for n, good in zip(s.names, ok.tolist()) if not good]
                self.diverged(f"run(s) {', '.join(bad)}: weights or Adam moments hold NaN or Inf at step {self.step}")
        tensors = {}
        for s in self.stacks:
            for i, n in enumerate(s.names):
                tensors |= {f"run.{n}.{k}": v for k, v in s.run_tensors(i).items()}
        buf = self.source.state_dict()
        tensors |= buf["tensors"]
        name = f"ckpt-{self.step}.safetensors"
        save_safetensors(tensors, self.ckpt_dir / name)
        prev = self.latest_checkpoint()
        atomic_write_json(self.ckpt_dir / "latest.json", {
            "step": self.step, "tensors": name, "stream": buf["stream"], "settings": self.settings(),
            "rows": self.rows, "seconds": self.seconds,
            "previous": {"step": prev["step"], "tensors": prev["tensors"]} if prev else None})

    def remove_unreferenced(self, meta: dict | None) -> None:
        """Checkpoint files that `latest.json` does not name (a full disk or a kill between writing the tensors
        and `latest.json`) are removed; without --resume, the whole folder."""
        if meta is None:
            shutil.rmtree(self.ckpt_dir, ignore_errors=True)
            return
        keep = {meta["tensors"], (meta.get("previous") or {}).get("tensors")}
        for f in self.ckpt_dir.glob("ckpt-*.safetensors"):
            if f.name not in keep:
                f.unlink()

    def confirm_checkpoint(self) -> None:
        """The newest checkpoint's weights have now trained a step with finite losses: older ones can go."""
        meta = self.latest_checkpoint()
        if meta is None:
            return
        for old in self.ckpt_dir.glob("ckpt-*.safetensors"):
            if old.name != meta["tensors"]:
                old.unlink()

    def load_checkpoint(self, meta: dict) -> None:
        diff = config_diff(meta["settings"], self.settings())
        if diff:
            raise ArtifactError(f"the checkpoint in {self.ckpt_dir} was made with other settings:\n  " +
                                "\n  ".join(diff[:12]) + (f"\n  ... and {len(diff) - 12} more" if len(diff) > 12 else "")
                                + f"\nRestore them to resume, or delete {self.ckpt_dir} to train afresh.")
        made_by = f"delete the folder {self.ckpt_dir} and retrain"
        state = load_safetensors(self.ckpt_dir / meta["tensors"], made_by=made_by)
        for s in self.stacks:
            for i, n in enumerate(s.names):
                pre = f"run.{n}."
                mine = {k[len(pre):]: v.to(self.device) for k, v in state.items() if k.startswith(pre)}
                if not mine:
                    raise ArtifactError(f"{self.ckpt_dir / meta['tensors']} holds no state for run {n}; {made_by}")
                s.load_run_tensors(i, mine)
        self.source.load_state_dict(state, meta["stream"])
        self.rows = meta["rows"]
        self.seconds = meta.get("seconds", self.seconds)
        self.step = meta["step"]
        self.unconfirmed = True  # its predecessor goes once a step from it has run

    # ---- divergence ----

    def diverged(self, what: str, cause: str = "sae") -> None:
        """Stop, naming what diverged and the last good checkpoint; a checkpoint of this very step holds the
        weights that failed, so the previous one is named (and made the latest)."""
        meta = self.latest_checkpoint()
        if meta and meta["step"] >= self.step and cause == "sae":
            prev = meta.get("previous")
            (self.ckpt_dir / meta["tensors"]).unlink(missing_ok=True)
            if prev and (self.ckpt_dir / prev["tensors"]).exists():
                meta_prev = read_json(self.ckpt_dir / "latest.json") | prev | {"previous": None}
                atomic_write_json(self.ckpt_dir / "latest.json", meta_prev)
                meta = meta_prev
            else:
                (self.ckpt_dir / "latest.json").unlink(missing_ok=True)
                meta = None
        where = (f"last good checkpoint: {self.ckpt_dir / 'latest.json'} (step {meta['step']})" if meta
                 else "no good checkpoint")
        if cause == "activations":
            advice = (f"The SAEs are not at fault: rebuild the LM and data (`{self.cfg.command('lm')}`) or check the "
                      f"text; then resume with --resume ({where}).")
        else:
            advice = (f"{where}. Lower train.lr or the run's lambdas, then resume with --resume" if meta else
                      f"{where}: lower train.lr or the run's lambdas and train afresh")
        raise TrainingDiverged(f"{what}. {advice}")

    def check_finite(self, stack: SAEStack, x_BD: torch.Tensor, terms) -> None:
        if bool(torch.isfinite(terms.total).all()):
            return
        if not bool(torch.isfinite(x_BD).all()):
            n = int((~torch.isfinite(x_BD)).sum())
            self.diverged(f"non-finite activations at {self.cfg.activations.hook} ({n} values of the batch) at step "
                          f"{self.step}", cause="activations")
        bad = []
        for i, n in enumerate(stack.names):
            t = [k for k, v in terms._asdict().items() if not bool(torch.isfinite(v[i]))]
            if t:
                bad.append(f"run {n}: non-finite {', '.join(t)}")
        self.diverged("; ".join(bad) + f" at step {self.step}")

    # ---- the loop ----

    def lr_at(self, step: int) -> float:
        t = self.cfg.train
        return t.lr * min(1.0, (step + 1) / t.lr_warmup_steps) if t.lr_warmup_steps else t.lr

    def log_rows(self, stack, x_BD, out, terms, lr: float) -> None:
        B = self.cfg.train.batch_tokens
        for n, row in zip(stack.names, stack.log_rows(x_BD, out, terms)):
            self.rows[n].append({"step": self.step, "tokens": (self.step + 1) * B, **row, "lr": lr,
                                 "seconds": round(self.seconds[n], 3)})

    def init_b_dec(self) -> None:
        """b_dec at the geometric median of the first buffer, for the runs that start there (computed once)."""
        median = None
        for s in self.stacks:
            for i, r in enumerate(s.runs):
                if r.b_dec_init == "geometric_median" and r.architecture == "relu":
                    if median is None:
                        median = geometric_median(self.source.peek(32768))
                    with torch.no_grad():
                        s.b_dec[i].copy_(median)

    def train(self, resume: bool = False) -> list[Path]:
        cfg = self.cfg
        if resume and all(run_is_complete(cfg, n) for n in self.names):
            print(f"{', '.join(self.names)}: already trained with these settings ({cfg.run_dir(self.names[0]).parent}); "
                  "nothing to do", file=sys.stderr)
            shutil.rmtree(self.ckpt_dir, ignore_errors=True)  # a kill after the last publish may have left it
            return [cfg.run_dir(n) for n in self.names]
        meta = self.latest_checkpoint() if resume else None
        self.remove_unreferenced(meta)
        if meta:
            self.load_checkpoint(meta)
        else:
            self.init_b_dec()
        steps, B = cfg.train.steps, cfg.train.batch_tokens
        desc = self.names[0] if len(self.names) == 1 else f"{len(self.names)} SAEs"
        bar = tqdm(total=steps, initial=self.step, desc=desc, disable=not self.progress, mininterval=2)
        t_start = last_note = time.time()
        start = self.step
        while self.step < steps:
            if self.step % cfg.train.checkpoint_every == 0 and self.step > start:
                self.save_checkpoint()
                self.unconfirmed = True
            x = self.source.next_batch(B)
            lr = self.lr_at(self.step)
            log = self.step % cfg.train.log_every == 0 or self.step == steps - 1
            for s in self.stacks:
                t0 = time.perf_counter()
                out, terms = s.step(x, lr, self.autocast, check=lambda terms, s=s: self.check_finite(s, x, terms))
                if log:
                    self.log_rows(s, x, out, terms, lr)
                dt = (time.perf_counter() - t0) / len(s)
                for n in s.names:
                    self.seconds[n] += dt
            if self.unconfirmed:
                self.confirm_checkpoint()
                self.unconfirmed = False
            if log:
                l0 = [self.rows[n][-1]["l0"] for n in self.names]
                bar.set_postfix(l0=f"{min(l0):.1f}" + (f"..{max(l0):.1f}" if len(l0) > 1 else ""), refresh=False)
            self.step += 1
            bar.update(1)
            if not self.progress and time.time() - last_note >= 60:  # logs without a progress bar
                last_note = time.time()
                rate = (self.step - start) * B / (last_note - t_start)
                print(f"step {self.step}/{steps}: {rate:,.0f} tokens/s through each of {len(self.names)} SAE(s) "
                      f"({rate * len(self.names):,.0f} SAE-tokens/s), about {(steps - self.step) * B / rate / 60:.1f} "
                      "min left", file=sys.stderr, flush=True)
        bar.close()
        for s in self.stacks:
            for i, n in enumerate(s.names):
                self.publish(n, s, i)
        shutil.rmtree(self.ckpt_dir, ignore_errors=True)  # the final weights supersede the checkpoints
        return [cfg.run_dir(n) for n in self.names]

    def publish(self, name: str, stack: SAEStack, i: int) -> None:
        """Write the run's folder in one step (a temporary folder renamed into place)."""
        cfg, run = self.cfg, stack.runs[i]
        if not bool(stack.finite()[i]):
            self.diverged(f"run {name}: its final weights hold NaN or Inf")
        with atomic_dir(cfg.run_dir(name)) as tmp:
            atomic_write_text(tmp / "metrics.csv", metrics_csv(self.rows[name]))
            stack.save_run(i, tmp, dataclasses.asdict(run), {
                "name": name, "config": cfg.base_run(name), "profile": cfg.name, "variant": cfg.variant,
                "profile_arg": cfg._profile_arg, "overrides": {k: v for k, v in cfg._overrides.items()},
                "label": run.label, "family": run.family, "hook": cfg.activations.hook,
                "train_seconds": round(self.seconds[name], 2),
                "train_hash": cfg.stage_hash("train", name), "settings": cfg.stage_config("train", name),
                "files": {"metrics.csv": file_digest(tmp / "metrics.csv")}, "metrics_rows": len(self.rows[name]),
                "provenance": provenance(cfg, self.device)})


def train_runs(cfg: ProfileConfig, run_names: list[str], resume: bool = False, progress: bool = True) -> list[Path]:
    """Train runs together (one shared activation stream); returns their folders."""
    return Trainer(cfg, run_names, progress).train(resume=resume)


def train_run(cfg: ProfileConfig, run_name: str, resume: bool = False, progress: bool = True) -> Path:
    return train_runs(cfg, [run_name], resume, progress)[0]

