"""The SAE trainer: Adam, decoder-row gradient projection and renormalisation, named loss terms logged
every `log_every` steps to `metrics.csv`, checkpoints every `checkpoint_every` steps, a progress bar.

A checkpoint is `checkpoints/ckpt-<step>.safetensors` (SAE, Adam moments, sparsity tracker, unserved
buffer, generator state) plus `checkpoints/latest.json` (step, stream position, logged rows), which is
written last and names the tensors file: a checkpoint exists once `latest.json` points at it.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import time
import zlib
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .activations import ActivationBuffer
from .config import ProfileConfig, RunConfig
from .io import atomic_write_json, atomic_write_text, load_safetensors, save_safetensors
from .lm import check_hook, load_lm, pick_device
from .losses import LossTerms, needs_ratio, sae_loss
from .metrics import batch_metrics
from .sae import SAE
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


class Trainer:
    def __init__(self, cfg: ProfileConfig, run_name: str, progress: bool = True):
        self.cfg, self.run_name, self.progress = cfg, run_name, progress
        self.run: RunConfig = cfg.run(run_name)
        self.folder = run_folder(cfg, run_name)
        self.ckpt_dir = self.folder / "checkpoints"
        self.device = pick_device(cfg.train.device)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = cfg.train.tf32
            torch.backends.cudnn.allow_tf32 = cfg.train.tf32
        self.model, _ = load_lm(cfg, self.device)
        check_hook(self.model, cfg.activations.hook)
        for p in self.model.parameters():
            p.requires_grad_(False)
        d_in = self.model.cfg.d_model
        gen = torch.Generator().manual_seed(init_seed(run_name, self.run.seed))
        self.sae = SAE(d_in, self.run.expansion * d_in, self.run.pre_encoder_bias, generator=gen).to(self.device)
        self.buffer = ActivationBuffer(self.model, cfg, self.device)
        self.window = self.run.window(cfg.train.batch_tokens)
        self.tracker = SparsityTracker(self.sae.d_sae, self.window, self.device)
        t = cfg.train
        self.opt = torch.optim.Adam(self.sae.parameters(), lr=t.lr, betas=(t.adam_beta1, t.adam_beta2))
        self.autocast = self.device.type == "cuda" and cfg.train.autocast_bf16
        self.step = 0
        self.rows: list[dict] = []
        self.seconds = 0.0  # training time before this process (resumed runs)

    # ---- checkpoints ----

    def save_checkpoint(self) -> None:
        tensors = {f"sae.{k}": v for k, v in self.sae.state_dict().items()}
        tensors |= {f"tracker.{k}": v for k, v in self.tracker.state_dict().items()}
        for i, p in enumerate(self.sae.parameters()):
            for k, v in self.opt.state.get(p, {}).items():
                tensors[f"adam.{i}.{k}"] = v
        buf = self.buffer.state_dict()
        tensors |= buf["tensors"]
        name = f"ckpt-{self.step}.safetensors"
        save_safetensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, self.ckpt_dir / name)
        atomic_write_json(self.ckpt_dir / "latest.json", {
            "step": self.step, "tensors": name, "stream": buf["stream"], "rows": self.rows,
            "seconds": self.seconds + time.time() - self.t0, "run": asdict(self.run)})
        for old in self.ckpt_dir.glob("ckpt-*.safetensors"):
            if old.name != name:
                old.unlink()

    def latest_checkpoint(self) -> dict | None:
        path = self.ckpt_dir / "latest.json"
        return json.loads(path.read_text()) if path.exists() else None

    def load_checkpoint(self, meta: dict) -> None:
        if meta["run"] != json.loads(json.dumps(asdict(self.run))):
            raise ValueError(f"checkpoint in {self.ckpt_dir} was made with another run config; delete the folder "
                             "to start afresh, or restore the config it was made with")
        state = load_safetensors(self.ckpt_dir / meta["tensors"])
        self.sae.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("sae.")})
        self.sae.to(self.device)
        self.tracker.load_state_dict({k[8:]: v for k, v in state.items() if k.startswith("tracker.")})
        for i, p in enumerate(self.sae.parameters()):
            s = {k.split(".", 2)[2]: v.to(self.device) for k, v in state.items() if k.startswith(f"adam.{i}.")}
            if s:
                s["step"] = s["step"].cpu()
                self.opt.state[p] = s
        self.buffer.load_state_dict(state, meta["stream"])
        self.step, self.rows, self.seconds = meta["step"], meta["rows"], meta["seconds"]

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
        raise TrainingDiverged(f"run {self.run_name}: non-finite {', '.join(bad)} at step {self.step}; {where}. "
                               "Lower train.lr or the lambdas, then resume with --resume.")

    def log_row(self, x_BD, out, terms: LossTerms, lr: float) -> dict:
        r = self.tracker.rolling()
        row = {"step": self.step, "tokens": (self.step + 1) * self.cfg.train.batch_tokens,
               "loss": float(terms.total), "mse_term": float(terms.mse),
               f"{self.run.sparsity}_term": float(terms.sparsity), "freq_term": float(terms.freq),
               "ghost_term": float(terms.ghost)}
        row |= batch_metrics(x_BD, out.f_BF, out.x_hat_BD, self.run.eps)
        row |= {"dead_rolling": int((r <= R_FLOOR).sum()), "below_s_min": int((r < self.run.s_min).sum()),
                "lr": lr, "seconds": round(self.seconds + time.time() - self.t0, 3)}
        return row

    def train(self, resume: bool = False) -> Path:
        cfg, run = self.cfg, self.run
        self.t0 = time.time()
        meta = self.latest_checkpoint() if resume else None
        if meta:
            self.load_checkpoint(meta)
        elif run.b_dec_init == "geometric_median":
            with torch.no_grad():
                self.sae.b_dec.copy_(geometric_median(self.buffer.peek(32768)))
        steps, B = cfg.train.steps, cfg.train.batch_tokens
        bar = tqdm(total=steps, initial=self.step, desc=self.run_name, disable=not self.progress, mininterval=2)
        while self.step < steps:
            x = self.buffer.next_batch(B)
            lr = self.lr_at(self.step)
            for g in self.opt.param_groups:
                g["lr"] = lr
            with torch.autocast("cuda", torch.bfloat16, enabled=self.autocast):
                out = self.sae(x, eps=run.eps if needs_ratio(run) else None)
                terms = sae_loss(run, self.sae, x, out, self.tracker)
            self.check_finite(x, terms)
            self.opt.zero_grad(set_to_none=True)
            terms.total.backward()
            self.sae.project_decoder_grad_()
            self.opt.step()
            self.sae.normalize_decoder_()
            if self.step % cfg.train.log_every == 0 or self.step == steps - 1:
                row = self.log_row(x, out, terms, lr)
                self.rows.append(row)
                bar.set_postfix(l0=f"{row['l0']:.1f}", mse=f"{row['mse_legacy']:.3g}", refresh=False)
            self.step += 1
            bar.update(1)
            if self.step % cfg.train.checkpoint_every == 0 and self.step < steps:
                self.save_checkpoint()
        bar.close()
        self.seconds += time.time() - self.t0
        self.sae.save(self.folder, {"name": self.run_name, **asdict(run), "profile": cfg.name,
                                    "hook": cfg.activations.hook, "train": asdict(cfg.train),
                                    "rolling_window": self.window, "train_seconds": round(self.seconds, 2)})
        write_metrics_csv(self.folder / "metrics.csv", self.rows)  # written last: marks the run complete
        shutil.rmtree(self.ckpt_dir, ignore_errors=True)  # the final weights supersede the checkpoints
        return self.folder


def train_run(cfg: ProfileConfig, run_name: str, resume: bool = False, progress: bool = True) -> Path:
    return Trainer(cfg, run_name, progress).train(resume=resume)
