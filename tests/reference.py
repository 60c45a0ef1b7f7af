"""SPEC "Definitions" written plainly, to check the real training step against (tests/test_reference.py).

Shares no code with saelib: a plain autograd SAE with 2-D parameters, the rolling window as a Python list,
s_eff formed as SPEC writes it, torch.optim.Adam (the per-tensor loop, not the fused kernel), the decoder
projection and renormalisation written out, ghost gradients as README "Ghost gradients" describes them. Runs in
float64 so that its own rounding is negligible next to the float32 trainer's.
"""

from __future__ import annotations

import math

import torch


class ReferenceRun:
    """One SAE trained by the plain SPEC loop. `settings`: the run's SPEC settings as plain values."""

    def __init__(self, W_enc, b_enc, W_dec, b_dec, settings: dict, lr: float, betas=(0.9, 0.999),
                 batch_tokens: int = 1):
        self.s = settings
        self.W_enc, self.b_enc, self.W_dec, self.b_dec = (
            torch.nn.Parameter(t.detach().double().clone()) for t in (W_enc, b_enc, W_dec, b_dec))
        self.params = [self.W_enc, self.b_enc, self.W_dec, self.b_dec]
        self.opt = torch.optim.Adam(self.params, lr=lr, betas=betas, foreach=False, fused=False)
        n = settings["rolling_window"] or math.ceil(10 / (settings["s_min"] * batch_tokens))
        self.window = n
        self.history: list[torch.Tensor] = []  # per-step values of the rolling estimate, oldest first
        self.steps_since_fired = torch.zeros(W_enc.shape[1], dtype=torch.long)

    def step(self, x: torch.Tensor) -> dict:
        s = self.s
        x = x.double()
        p = 1.0 if s["pre_encoder_bias"] else 0.0
        pre = (x - p * self.b_dec) @ self.W_enc + self.b_enc
        f = torch.relu(pre)
        x_hat = f @ self.W_dec + self.b_dec

        # the rolling estimate: this step's value joins the window (the true firing fraction, or s_hat)
        s_hat = (f / (f + s["eps"])).mean(0)
        fired = (f > 0).double().mean(0)
        self.history.append((s_hat if s["rolling_source"] == "s_hat" else fired).detach().clone())
        self.history = self.history[-self.window:]
        r = torch.stack(self.history).mean(0).clamp_min(1e-10)
        self.steps_since_fired = torch.where(fired > 0, 0, self.steps_since_fired + 1)
        dead = self.steps_since_fired >= s["dead_window"]

        norm = (x - x.mean(0)).norm(dim=1, keepdim=True).clamp_min(1e-6)
        mse = ((x_hat - x) ** 2 / norm).mean()
        if s["sparsity"] == "l0approx":
            sparsity = (f / (f + s["eps"])).sum(1).mean()
        elif s["sparsity"] == "l1":
            sparsity = f.sum(1).mean()
        else:
            sparsity = torch.tanh(f).sum(1).mean()
        s_eff = s_hat + (r - s_hat).detach()  # value r, gradient of s_hat
        freq = torch.relu(math.log10(s["s_min"]) - torch.log10(s_eff)).sum()
        ghost = torch.zeros((), dtype=torch.float64)
        if s["ghost"] and bool(dead.any()):
            variant = s["ghost_variant"]
            residual = x - x_hat if variant == "exp_relu" else (x - x_hat).detach()  # the first release's code
            b_dec = self.b_dec.detach() if variant == "scalar" else self.b_dec
            pre_dead = (x - p * b_dec) @ self.W_enc[:, dead] + self.b_enc[dead]
            out = torch.exp(torch.relu(pre_dead) if variant == "exp_relu" else pre_dead) @ self.W_dec[dead]
            scale = (residual.norm(dim=1, keepdim=True) / (2 * out.norm(dim=1, keepdim=True) + 1e-6)).detach()
            out = out * scale
            r_norm = (residual - residual.mean(0)).norm(dim=1, keepdim=True).clamp_min(1e-6)
            if variant == "scalar":
                ghost_mse = ((out - residual) ** 2 / r_norm).mean()
                ghost = (mse / (ghost_mse + 1e-6)).detach() * ghost_mse
            else:
                mse_el = ((x_hat - x) ** 2 / norm).detach()
                ghost_el = (out - residual) ** 2 / r_norm
                ghost = ((mse_el / (ghost_el + 1e-6)).detach() * ghost_el).mean()
        lam_min = s["lambda_min"]
        total = mse + s["lambda_sparsity"] * sparsity + (lam_min * freq if lam_min > 0 else 0.0) + ghost

        self.opt.zero_grad()
        total.backward()
        with torch.no_grad():
            g, w = self.W_dec.grad, self.W_dec
            g -= (g * w).sum(1, keepdim=True) * w  # remove the component along each (unit) row
        self.opt.step()
        with torch.no_grad():
            self.W_dec /= self.W_dec.norm(dim=1, keepdim=True)
        return {"mse": mse.detach(), "sparsity": sparsity.detach(), "freq": freq.detach() if lam_min > 0 else
                torch.zeros((), dtype=torch.float64), "ghost": ghost.detach(), "total": total.detach(), "r": r, "dead": dead}
