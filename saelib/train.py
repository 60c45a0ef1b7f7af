"""The SAE trainer: Adam, decoder-row gradient projection and renormalisation, named loss terms logged
every `log_every` steps to `metrics.csv`, checkpoints every `checkpoint_every` steps, a progress bar.

One process trains a group of runs on one shared activation stream: each batch of activations is computed
once and every SAE of the group takes its step on it. The stream depends only on the profile seed and each
SAE's initialisation only on its run name and seed, so a run ends exactly as it would alone.

A checkpoint is `<out>/checkpoints/<group>/ckpt-<step>.safetensors` (every SAE, its Adam moments and
sparsity tracker; the unserved buffer and its generator state) plus `latest.json` (step, stream position,
logged rows), which is written last and names the tensors file: a checkpoint exists once `latest.json`
points at it.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import sys
import time
import zlib
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .activations import ActivationBuffer
from .config import ProfileConfig, RunConfig, TrainConfig
from .io import atomic_dir, atomic_write_json, atomic_write_text, load_safetensors, save_safetensors
from .lm import check_hook, load_lm, pick_device
from .losses import LossTerms, needs_ratio, sae_loss
from .metrics import batch_metrics
from .sae import SAE, SAEOutput
from .sparsity import R_FLOOR, SparsityTracker


class TrainingDiverged(FloatingPointError):
    """NaN or Inf in the activations or a loss term."""


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


def init_seed(run_name: str, seed: int) -> int:
    """Seed of a run's SAE initialisation: runs differ by name and seed, so no two runs share a starting
    decoder (which would inflate feature matching between them)."""
    return seed * 1_000_003 + zlib.crc32(run_name.encode())


def run_folder(cfg: ProfileConfig, run_name: str) -> Path:
    return cfg.out / "runs" / run_name


def write_metrics_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def make_optimizer(sae: SAE, t: TrainConfig) -> torch.optim.Adam:
    """Adam with the single fused kernel over all parameters on CPU and CUDA (5-14x faster than the
    per-tensor loop on this package's CPU shapes)."""
    fused = next(sae.parameters()).device.type in ("cpu", "cuda")
    return torch.optim.Adam(sae.parameters(), lr=t.lr, betas=(t.adam_beta1, t.adam_beta2), fused=fused)


def train_step(run: RunConfig, sae: SAE, tracker: SparsityTracker, opt: torch.optim.Optimizer, x_BD: torch.Tensor,
               autocast: bool = False, check=None) -> tuple[SAEOutput, LossTerms]:
    """One optimiser step of one SAE: forward, every loss term, backward, decoder-gradient projection,
    Adam, decoder renormalisation. `check(terms)` runs before the backward pass (the finiteness check)."""
    with torch.autocast("cuda", torch.bfloat16, enabled=autocast):
        out = sae(x_BD, eps=run.eps if needs_ratio(run) else None)
        terms = sae_loss(run, sae, x_BD, out, tracker)
    if check is not None:
        check(terms)
    opt.zero_grad(set_to_none=True)
    terms.total.backward()
    sae.project_decoder_grad_()
    opt.step()
    sae.normalize_decoder_()
    return out, terms


class RunState:
    """One SAE of a group: its weights, Adam, rolling estimate and logged rows."""

    def __init__(self, cfg: ProfileConfig, name: str, d_in: int, device: torch.device):
        self.cfg, self.name = cfg, name
        self.run: RunConfig = cfg.run(name)
        self.folder = run_folder(cfg, name)
        gen = torch.Generator().manual_seed(init_seed(name, self.run.seed))
        self.sae = SAE(d_in, self.run.expansion * d_in, self.run.pre_encoder_bias, generator=gen).to(device)
        self.window = self.run.window(cfg.train.batch_tokens)
        self.tracker = SparsityTracker(self.sae.d_sae, self.window, device)
        self.opt = make_optimizer(self.sae, cfg.train)
        self.rows: list[dict] = []
        self.seconds = 0.0  # time spent in this run's steps (all processes)

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {f"sae.{k}": v for k, v in self.sae.state_dict().items()}
        out |= {f"tracker.{k}": v for k, v in self.tracker.state_dict().items()}
        for i, p in enumerate(self.sae.parameters()):
            for k, v in self.opt.state.get(p, {}).items():
                out[f"adam.{i}.{k}"] = v
        return {f"run.{self.name}.{k}": v for k, v in out.items()}

    def load_tensors(self, state: dict[str, torch.Tensor], device: torch.device) -> None:
        pre = f"run.{self.name}."
        mine = {k[len(pre):]: v for k, v in state.items() if k.startswith(pre)}
        self.sae.load_state_dict({k[4:]: v for k, v in mine.items() if k.startswith("sae.")})
        self.sae.to(device)
        self.tracker.load_state_dict({k[8:]: v for k, v in mine.items() if k.startswith("tracker.")})
        fused = self.opt.param_groups[0].get("fused")
        for i, p in enumerate(self.sae.parameters()):
            s = {k.split(".", 2)[2]: v.to(device) for k, v in mine.items() if k.startswith(f"adam.{i}.")}
            if s:
                if not fused:  # the step count lives on the CPU, except for the fused kernel
                    s["step"] = s["step"].cpu()
                self.opt.state[p] = s

    def log_row(self, step: int, x_BD, out, terms: LossTerms, lr: float) -> dict:
        r = self.tracker.rolling()
        t = {k: float(v.detach()) for k, v in terms._asdict().items()}
        row = {"step": step, "tokens": (step + 1) * self.cfg.train.batch_tokens,
               "loss": t["total"], "mse_term": t["mse"], f"{self.run.sparsity}_term": t["sparsity"],
               "freq_term": t["freq"], "ghost_term": t["ghost"]}
        row |= batch_metrics(x_BD, out.f_BF, out.x_hat_BD, self.run.eps)
        row |= {"dead_rolling": int((r <= R_FLOOR).sum()), "below_s_min": int((r < self.run.s_min).sum()),
                "lr": lr, "seconds": round(self.seconds, 3)}
        return row

    def save(self, cfg: ProfileConfig) -> None:
        """Publish the run folder in one step: weights, config and metrics are written into a temporary folder
        that is then renamed into place, so a run folder that exists is complete (and any older evaluation in
        it is gone with the old folder)."""
        with atomic_dir(self.folder) as tmp:
            self.sae.save(tmp, {"name": self.name, **asdict(self.run), "profile": cfg.name,
                                "hook": cfg.activations.hook, "train": asdict(cfg.train),
                                "rolling_window": self.window, "train_seconds": round(self.seconds, 2)})
            write_metrics_csv(tmp / "metrics.csv", self.rows)


def group_id(names: list[str]) -> str:
    """Checkpoint folder name of a group: the run's own name for one run, a hash of the names otherwise."""
    return names[0] if len(names) == 1 else f"group-{zlib.crc32(chr(10).join(names).encode()):08x}"


class Trainer:
    """Trains one run, or a group of runs on one shared activation stream, in lockstep."""

    def __init__(self, cfg: ProfileConfig, run_names: str | list[str], progress: bool = True):
        names = [run_names] if isinstance(run_names, str) else list(run_names)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"a training group needs distinct run names, got {names}")
        self.cfg, self.progress = cfg, progress
        for n in names:
            cfg.run(n)  # ConfigError for an unknown name, before the LM loads
        self.ckpt_dir = cfg.out / "checkpoints" / group_id(names)
        self.device = pick_device(cfg.train.device)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = cfg.train.tf32
            torch.backends.cudnn.allow_tf32 = cfg.train.tf32
        self.model, _ = load_lm(cfg, self.device)
        check_hook(self.model, cfg.activations.hook)
        for p in self.model.parameters():
            p.requires_grad_(False)
        d_in = self.model.cfg.d_model
        self.runs = [RunState(cfg, n, d_in, self.device) for n in names]
        self.buffer = ActivationBuffer(self.model, cfg, self.device)
        self.autocast = self.device.type == "cuda" and cfg.train.autocast_bf16
        self.step = 0
        self.active: RunState | None = None  # the run taking its step (named when training diverges)

    @property
    def sae(self) -> SAE:
        """The SAE of a one-run trainer."""
        if len(self.runs) != 1:
            raise AttributeError("this trainer holds several SAEs: use .runs[i].sae")
        return self.runs[0].sae

    # ---- checkpoints ----

    def _configs(self) -> dict:
        return json.loads(json.dumps({r.name: asdict(r.run) for r in self.runs}))

    def save_checkpoint(self) -> None:
        tensors = {}
        for r in self.runs:
            tensors |= r.tensors()
        buf = self.buffer.state_dict()
        tensors |= buf["tensors"]
        name = f"ckpt-{self.step}.safetensors"
        save_safetensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, self.ckpt_dir / name)
        atomic_write_json(self.ckpt_dir / "latest.json", {
            "step": self.step, "tensors": name, "stream": buf["stream"], "runs": self._configs(),
            "rows": {r.name: r.rows for r in self.runs}, "seconds": {r.name: r.seconds for r in self.runs}})
        for old in self.ckpt_dir.glob("ckpt-*.safetensors"):
            if old.name != name:
                old.unlink()

    def latest_checkpoint(self) -> dict | None:
        path = self.ckpt_dir / "latest.json"
        return json.loads(path.read_text()) if path.exists() else None

    def load_checkpoint(self, meta: dict) -> None:
        if meta.get("runs") != self._configs():
            raise ValueError(f"checkpoint in {self.ckpt_dir} was made with another run config; delete the folder "
                             "to start afresh, or restore the config it was made with")
        state = load_safetensors(self.ckpt_dir / meta["tensors"])
        for r in self.runs:
            r.load_tensors(state, self.device)
            r.rows, r.seconds = meta["rows"][r.name], meta["seconds"][r.name]
        self.buffer.load_state_dict(state, meta["stream"])
        self.step = meta["step"]

    # ---- the loop ----

    def lr_at(self, step: int) -> float:
        t = self.cfg.train
        return t.lr * min(1.0, (step + 1) / t.lr_warmup_steps) if t.lr_warmup_steps else t.lr

    def check_finite(self, x_BD: torch.Tensor, terms: LossTerms) -> None:
        if bool(torch.isfinite(terms.total)):
            return
        bad = [n for n, v in terms._asdict().items() if not bool(torch.isfinite(v))]
        if not bool(torch.isfinite(x_BD).all()):
            bad.insert(0, "activations")
        last = self.latest_checkpoint()
        where = (f"last good checkpoint: {self.ckpt_dir / 'latest.json'} (step {last['step']})" if last
                 else "no checkpoint was written yet")
        raise TrainingDiverged(f"run {self.active.name}: non-finite {', '.join(bad)} at step {self.step}; {where}. "
                               "Lower train.lr or the lambdas, then resume with --resume.")

    def log_row(self, r: RunState, x_BD, out, terms: LossTerms, lr: float) -> dict:
        return r.log_row(self.step, x_BD, out, terms, lr)

    def train(self, resume: bool = False) -> list[Path]:
        cfg = self.cfg
        meta = self.latest_checkpoint() if resume else None
        if meta:
            self.load_checkpoint(meta)
        else:
            median = None  # of the first buffer, shared by every run that starts b_dec there
            for r in self.runs:
                if r.run.b_dec_init == "geometric_median":
                    if median is None:
                        median = geometric_median(self.buffer.peek(32768))
                    with torch.no_grad():
                        r.sae.b_dec.copy_(median)
        steps, B = cfg.train.steps, cfg.train.batch_tokens
        desc = self.runs[0].name if len(self.runs) == 1 else f"{len(self.runs)} SAEs"
        bar = tqdm(total=steps, initial=self.step, desc=desc, disable=not self.progress, mininterval=2)
        t_start = last_note = time.time()
        start = self.step
        while self.step < steps:
            x = self.buffer.next_batch(B)
            lr = self.lr_at(self.step)
            log = self.step % cfg.train.log_every == 0 or self.step == steps - 1
            for r in self.runs:
                self.active = r
                t0 = time.perf_counter()
                for g in r.opt.param_groups:
                    g["lr"] = lr
                out, terms = train_step(r.run, r.sae, r.tracker, r.opt, x, self.autocast,
                                        check=lambda terms: self.check_finite(x, terms))
                if log:
                    r.rows.append(self.log_row(r, x, out, terms, lr))
                r.seconds += time.perf_counter() - t0
            if log:
                l0 = [r.rows[-1]["l0"] for r in self.runs]
                bar.set_postfix(l0=f"{min(l0):.1f}" + (f"..{max(l0):.1f}" if len(l0) > 1 else ""), refresh=False)
            self.step += 1
            bar.update(1)
            if not self.progress and time.time() - last_note >= 60:  # logs without a progress bar
                last_note = time.time()
                rate = (self.step - start) * B / (last_note - t_start)
                print(f"step {self.step}/{steps}: {rate:,.0f} tokens/s through each of {len(self.runs)} SAE(s) "
                      f"({rate * len(self.runs):,.0f} SAE-tokens/s), about {(steps - self.step) * B / rate / 60:.1f} "
                      "min left", file=sys.stderr, flush=True)
            if self.step % cfg.train.checkpoint_every == 0 and self.step < steps:
                self.save_checkpoint()
        bar.close()
        for r in self.runs:
            r.save(cfg)
        shutil.rmtree(self.ckpt_dir, ignore_errors=True)  # the final weights supersede the checkpoints
        return [r.folder for r in self.runs]


def train_runs(cfg: ProfileConfig, run_names: list[str], resume: bool = False, progress: bool = True) -> list[Path]:
    """Train runs together (one shared activation stream); returns their folders."""
    return Trainer(cfg, run_names, progress).train(resume=resume)


def train_run(cfg: ProfileConfig, run_name: str, resume: bool = False, progress: bool = True) -> Path:
    return train_runs(cfg, [run_name], resume, progress)[0]
