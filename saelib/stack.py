"""A training group's SAEs as one stacked model (every run of one width, with a leading run axis R).

Parameters are stacked tensors (W_enc (R, D, F), b_enc (R, F), W_dec (R, F, D), b_dec (R, D)); the encoder and
decoder are batched matrix products over the shared batch x (B, D); every loss term is computed for all runs
at once with per-run hyperparameters as (R,) tensors; one fused Adam steps the whole stack. Each run's slice
evolves exactly as that run would alone: the runs share no parameter, and every operation is per run.

One step (`SAEStack.step`), in SPEC's terms:
    forward        pre = W_enc^T (x - p b_dec) + b_enc;  f = ReLU(pre);  x_hat = W_dec^T f + b_dec
    tracker        this step's firing fraction (or s_hat) enters the rolling window; r_f, dead mask
    loss           MSE + lambda * {L0approx | L1 | tanh} + lambda_min * P_freq(s_eff) + ghost   (losses.sae_loss)
    backward       (the ReLU + a/(a+eps) part by kernels.relu_ratio's hand-written backward)
    projection     decoder gradients lose their component along their row
    Adam           one fused kernel over the stack
    renormalise    decoder rows back to unit norm
"""

from __future__ import annotations

import zlib
from typing import NamedTuple

import torch
from torch import nn

from . import losses as L
from .config import RunConfig, TrainConfig
from .kernels import colsum, firing_counts, relu_ratio
from .sae import SAE, decode, encode_pre, kaiming_init, normalize_rows_, project_rows_
from .sparsity import SparsityTracker


def init_seed(run_name: str, seed: int) -> int:
    """Seed of a run's SAE initialisation: runs differ by name and seed, so no two runs share a starting
    decoder (which would inflate feature matching between them)."""
    return seed * 1_000_003 + zlib.crc32(run_name.encode())


class StackOutput(NamedTuple):
    f_RBF: torch.Tensor  # feature activations a
    x_hat_RBD: torch.Tensor  # reconstructions
    ratio_colsum_RF: torch.Tensor | None  # sum_b a/(a+eps), when some run needs it
    fired_RF: torch.Tensor  # firing counts: rows of the batch where each feature fires
    f_colsum_RF: torch.Tensor  # sum_b f (L1)


def make_optimizer(params, t: TrainConfig) -> torch.optim.Adam:
    """Adam with the single fused kernel over all parameters on CPU and CUDA (bench/RESULTS.md: 5-14x faster than
    the per-tensor loop on this package's CPU shapes)."""
    params = list(params)
    fused = params[0].device.type in ("cpu", "cuda")
    return torch.optim.Adam(params, lr=t.lr, betas=(t.adam_beta1, t.adam_beta2), fused=fused)


class SAEStack(nn.Module):
    """R runs of the same d_in and d_sae, trained in lockstep on the same batches."""

    PARAMS = ("W_enc", "b_enc", "W_dec", "b_dec")

    def __init__(self, names: list[str], runs: list[RunConfig], d_in: int, train: TrainConfig,
                 device: torch.device | str = "cpu"):
        super().__init__()
        d_sae = {r.d_sae(d_in) for r in runs}
        if len(d_sae) != 1:
            raise ValueError(f"a stack holds runs of one width; got d_sae {sorted(d_sae)} for {names}")
        self.names, self.runs, self.d_in, self.d_sae = list(names), list(runs), d_in, d_sae.pop()
        inits = [kaiming_init(d_in, self.d_sae, torch.Generator().manual_seed(init_seed(n, r.seed)))
                 for n, r in zip(names, runs)]
        R = len(runs)
        self.W_enc = nn.Parameter(torch.stack([w for w, _ in inits]).to(device))
        self.b_enc = nn.Parameter(torch.zeros(R, self.d_sae, device=device))
        self.W_dec = nn.Parameter(torch.stack([w for _, w in inits]).to(device))
        self.b_dec = nn.Parameter(torch.zeros(R, d_in, device=device))

        def vec(values, dtype=torch.float32):
            return torch.tensor(values, dtype=dtype, device=device)

        # per-run hyperparameters (SPEC names), shaped to broadcast against (R,), (R, F) or (R, B, F)
        self.lambda_sparsity_R = vec([r.lambda_sparsity for r in runs])
        self.lambda_min_R = vec([r.lambda_min for r in runs])
        self.s_min_R1 = vec([[r.s_min] for r in runs])
        self.eps_R11 = vec([[[r.eps]] for r in runs])
        self.dead_window_R1 = vec([[r.dead_window] for r in runs], torch.long)
        self.is_R = {k: vec([float(r.sparsity == k) for r in runs]) for k in ("l0approx", "l1", "tanh")}
        self.uses = {k: any(r.sparsity == k for r in runs) for k in ("l0approx", "l1", "tanh")}
        self.freq = any(r.lambda_min > 0 for r in runs)
        self.has_freq_R = vec([float(r.lambda_min > 0) for r in runs])  # P_freq is reported as 0 where it is off
        self.rolling_s_hat_R1 = vec([[r.rolling_source == "s_hat"] for r in runs], torch.bool)
        self.needs_ratio = self.uses["l0approx"] or self.freq or bool(self.rolling_s_hat_R1.any())
        self.pre_bias = vec([[[float(r.pre_encoder_bias)]] for r in runs]) if any(
            r.pre_encoder_bias for r in runs) else False
        self.ghost_runs = [i for i, r in enumerate(runs) if r.ghost]
        self.windows = [r.window(train.batch_tokens) for r in runs]
        self.tracker = SparsityTracker(self.d_sae, self.windows, device)
        self.opt = make_optimizer(self.parameters(), train)

    def __len__(self) -> int:
        return len(self.runs)

    # ---- forward and loss ----

    def forward(self, x_BD: torch.Tensor) -> StackOutput:
        pre = encode_pre(x_BD, self.W_enc, self.b_enc, self.b_dec, self.pre_bias)
        if self.needs_ratio:
            f, ratio_colsum, fired, f_colsum = relu_ratio(pre, self.eps_R11)
        else:
            f = torch.relu(pre)
            ratio_colsum, fired, f_colsum = None, firing_counts(f.detach()), colsum(f)
        return StackOutput(f, decode(f, self.W_dec, self.b_dec), ratio_colsum, fired, f_colsum)

    def sparsity_term(self, out: StackOutput) -> torch.Tensor:
        """Each run's sparsity term: L0approx, L1 or tanh, whichever it uses (R,)."""
        B = out.f_RBF.shape[-2]
        terms = []
        if self.uses["l0approx"]:
            terms.append(self.is_R["l0approx"] * L.l0approx(out.ratio_colsum_RF, B))
        if self.uses["l1"]:
            terms.append(self.is_R["l1"] * L.l1(out.f_colsum_RF, B))
        if self.uses["tanh"]:
            terms.append(self.is_R["tanh"] * L.tanh_sparsity(out.f_RBF))
        return sum(terms[1:], terms[0])

    def ghost_terms(self, x_BD: torch.Tensor, out: StackOutput, mse_R: torch.Tensor) -> torch.Tensor | None:
        """Ghost-gradient terms (R,) of the runs that use them and have dead features now; None if none does."""
        if not self.ghost_runs:
            return None
        dead_RF = self.tracker.dead_mask(self.dead_window_R1)
        ghost = [mse_R.new_zeros(()) for _ in self.runs]
        for i in self.ghost_runs:
            dead_F = dead_RF[i]
            if not bool(dead_F.any()):
                continue
            variant_i = self.runs[i].ghost_variant
            b_dec = self.b_dec[i].detach() if variant_i == "scalar" else self.b_dec[i]  # scalar: b_dec detached
            pre_BK = encode_pre(x_BD, self.W_enc[i], self.b_enc[i], b_dec, self.runs[i].pre_encoder_bias, dead_F)
            ghost[i] = L.ghost_loss(x_BD, out.x_hat_RBD[i], pre_BK, self.W_dec[i][dead_F], mse_R[i], variant_i)
        return torch.stack(ghost)

    def loss(self, x_BD: torch.Tensor, out: StackOutput) -> L.LossTerms:
        """Every term of the step, from the tracker's current r_f and dead mask (changes no state)."""
        B = x_BD.shape[-2]
        s_hat = L.s_hat(out.ratio_colsum_RF, B) if self.freq else None
        r = self.tracker.rolling() if self.freq else None
        terms = L.sae_loss(x_BD, out.x_hat_RBD, self.sparsity_term(out), s_hat, r, self.lambda_sparsity_R,
                           self.lambda_min_R, self.s_min_R1)
        if self.freq:
            terms = terms._replace(freq=terms.freq * self.has_freq_R)
        ghost = self.ghost_terms(x_BD, out, terms.mse)
        if ghost is None:
            return terms
        return terms._replace(ghost=ghost, total=terms.total + ghost)

    @torch.no_grad()
    def track(self, out: StackOutput) -> None:
        """This step's firing fraction (or s_hat) of every feature into the rolling window."""
        B = out.f_RBF.shape[-2]
        fired_RF = out.fired_RF
        value_RF = fired_RF / B
        if bool(self.rolling_s_hat_R1.any()):
            value_RF = torch.where(self.rolling_s_hat_R1, L.s_hat(out.ratio_colsum_RF, B), value_RF)
        self.tracker.update(value_RF, fired_RF > 0)

    def step(self, x_BD: torch.Tensor, lr: float, autocast: bool = False, check=None) -> tuple[StackOutput, L.LossTerms]:
        """One optimiser step of every run (module docstring). `check(terms)` runs before the backward pass
        (the finiteness check); the tracker has taken this step's values by then."""
        for g in self.opt.param_groups:
            g["lr"] = lr
        with torch.autocast("cuda", torch.bfloat16, enabled=autocast):
            out = self.forward(x_BD)
            self.track(out)
            terms = self.loss(x_BD, out)
        if check is not None:
            check(terms)
        self.opt.zero_grad(set_to_none=True)
        terms.total.sum().backward()
        project_rows_(self.W_dec.grad, self.W_dec)
        self.opt.step()
        normalize_rows_(self.W_dec)
        return out, terms

    # ---- metrics of the training batch (logged every `log_every` steps) ----

    @torch.no_grad()
    def batch_metrics(self, x_BD: torch.Tensor, out: StackOutput) -> dict[str, torch.Tensor]:
        """L0, L1, L0approx, legacy MSE, plain MSE and FVU of each run on this batch, (R,) each."""
        f, x_hat = out.f_RBF.float(), out.x_hat_RBD.float()
        B = f.shape[-2]
        err = (x_hat - x_BD).pow(2)
        var = (x_BD - x_BD.mean(0)).pow(2).sum()
        return {"l0": L.l0(out.fired_RF, B), "l1": L.l1(out.f_colsum_RF.detach(), B),
                "l0approx": L.l0approx(L.ratio_colsum(f, self.eps_R11), B),
                "mse_legacy": L.legacy_mse(x_hat, x_BD), "mse": err.mean((-2, -1)),
                "fvu": err.sum((-2, -1)) / var.clamp_min(1e-12)}

    @torch.no_grad()
    def log_rows(self, x_BD: torch.Tensor, out: StackOutput, terms: L.LossTerms) -> list[dict]:
        """What a metrics.csv row holds, for each run: every loss term (the sparsity term under its own name:
        l0approx_term, l1_term, tanh_term), the batch metrics, the rolling estimate's dead and below-s_min counts."""
        r = self.tracker.rolling()
        cols = {"loss": terms.total, "mse_term": terms.mse, "sparsity": terms.sparsity, "freq_term": terms.freq,
                "ghost_term": terms.ghost, **self.batch_metrics(x_BD, out),
                "dead_rolling": (r <= L.R_FLOOR).sum(-1), "below_s_min": (r < self.s_min_R1).sum(-1)}
        cols = {k: v.tolist() for k, v in cols.items()}
        rows = []
        for i, run in enumerate(self.runs):
            row = {k: v[i] for k, v in cols.items()}
            row[f"{run.sparsity}_term"] = row.pop("sparsity")
            rows.append(row)
        return rows

    # ---- one run's slice: checkpoints, results ----

    def run_tensors(self, i: int) -> dict[str, torch.Tensor]:
        """Run i's weights, Adam moments and tracker state, under names independent of the stack."""
        out = {f"sae.{k}": getattr(self, k)[i] for k in self.PARAMS}
        out |= {f"tracker.{k}": v for k, v in self.tracker.run_state(i).items()}
        for k in self.PARAMS:
            for s, v in self.opt.state.get(getattr(self, k), {}).items():
                out[f"adam.{k}.{s}"] = v if s == "step" else v[i]
        return out

    @torch.no_grad()
    def load_run_tensors(self, i: int, state: dict[str, torch.Tensor]) -> None:
        for k in self.PARAMS:
            getattr(self, k)[i].copy_(state[f"sae.{k}"])
        self.tracker.load_run_state(i, {k[len("tracker."):]: v for k, v in state.items() if k.startswith("tracker.")})
        for k in self.PARAMS:
            p = getattr(self, k)
            if f"adam.{k}.step" not in state:
                continue
            st = self.opt.state[p]
            if not st:  # Adam creates its state lazily: make it in the fused kernel's layout
                st["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                st["exp_avg"] = torch.zeros_like(p)
                st["exp_avg_sq"] = torch.zeros_like(p)
            st["step"].copy_(state[f"adam.{k}.step"])
            st["exp_avg"][i].copy_(state[f"adam.{k}.exp_avg"])
            st["exp_avg_sq"][i].copy_(state[f"adam.{k}.exp_avg_sq"])

    def save_run(self, i: int, folder, run_config: dict, extra: dict) -> None:
        """Run i's weights and cfg.json in `folder`."""
        self.sae(i).save(folder, run_config, {**extra, "rolling_window": self.windows[i]})

    def sae(self, i: int) -> SAE:
        """Run i as a standalone SAE (a copy of its slice)."""
        sae = SAE(self.d_in, self.d_sae, self.runs[i].pre_encoder_bias)
        with torch.no_grad():
            for k in self.PARAMS:
                getattr(sae, k).copy_(getattr(self, k)[i].detach().float().cpu())
        return sae

    def finite(self) -> torch.Tensor:
        """(R,) bool: which runs' weights and Adam moments are all finite."""
        ok = torch.ones(len(self.runs), dtype=torch.bool, device=self.W_enc.device)
        for k in self.PARAMS:
            p = getattr(self, k)
            tensors = [p] + [v for s, v in self.opt.state.get(p, {}).items() if s != "step"]
            for t in tensors:
                ok &= torch.isfinite(t.detach()).flatten(1).all(1)
        return ok
