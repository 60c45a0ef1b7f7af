"""The sparse autoencoder (SPEC "Definitions", SAE) and its on-disk format.

    f     = ReLU(W_enc^T (x - p * b_dec) + b_enc)        # (B, F)
    x_hat = W_dec^T f + b_dec                             # (B, D)

Shapes: D = d_in, F = d_sae. W_enc is (D, F), W_dec is (F, D): one unit-norm row per feature.
Saved as `sae.safetensors` (weights only) + `cfg.json` (shapes and the run config).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from .io import atomic_write_json, load_safetensors, save_safetensors
from .kernels import relu_ratio


class SAEOutput(NamedTuple):
    pre_BF: torch.Tensor  # pre-activation (before ReLU)
    f_BF: torch.Tensor  # feature activations a
    x_hat_BD: torch.Tensor  # reconstruction
    ratio_sum_F: torch.Tensor | None = None  # sum_b a/(a+eps), when forward() was given eps


@dataclass
class SAEShape:
    d_in: int
    d_sae: int
    pre_encoder_bias: bool


class SAE(nn.Module):
    def __init__(self, d_in: int, d_sae: int, pre_encoder_bias: bool = False, generator: torch.Generator | None = None):
        super().__init__()
        self.shape = SAEShape(d_in, d_sae, pre_encoder_bias)
        # Kaiming-uniform init of both matrices, decoder rows then normalised to unit norm.
        bound = (6 / d_in) ** 0.5
        W_dec = (torch.rand(d_sae, d_in, generator=generator) * 2 - 1) * bound
        W_enc = (torch.rand(d_in, d_sae, generator=generator) * 2 - 1) * bound
        self.W_enc = nn.Parameter(W_enc)
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.W_dec = nn.Parameter(W_dec)
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.normalize_decoder_()

    @property
    def d_in(self) -> int:
        return self.shape.d_in

    @property
    def d_sae(self) -> int:
        return self.shape.d_sae

    def encode_pre(self, x_BD: torch.Tensor) -> torch.Tensor:
        if self.shape.pre_encoder_bias:
            x_BD = x_BD - self.b_dec
        return torch.addmm(self.b_enc, x_BD, self.W_enc)

    def encode(self, x_BD: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.encode_pre(x_BD))

    def decode(self, f_BF: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.b_dec, f_BF, self.W_dec)

    def forward(self, x_BD: torch.Tensor, eps: float | None = None) -> SAEOutput:
        """With `eps`, also returns sum_b a/(a+eps) per feature (for L0approx and s_hat), computed by the
        fused ReLU + ratio kernel."""
        pre = self.encode_pre(x_BD)
        if eps is None:
            f = torch.relu(pre)
            return SAEOutput(pre, f, self.decode(f))
        f, ratio_sum = relu_ratio(pre, eps)
        return SAEOutput(pre, f, self.decode(f), ratio_sum)

    # ---- unit-norm decoder rows (SPEC: project the gradient, renormalise after the step) ----

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def project_decoder_grad_(self) -> None:
        """Remove from each decoder row's gradient its component parallel to the row.
        Rows are unit norm, so the parallel component is (g . w) w."""
        if self.W_dec.grad is None:
            return
        g, w = self.W_dec.grad, self.W_dec
        dot_F1 = torch.einsum("fd,fd->f", g, w).unsqueeze(1)  # row-wise g . w, no (F, D) temporary
        g.addcmul_(dot_F1, w, value=-1.0)

    # ---- files ----

    def save(self, folder: str | Path, run_config: dict | None = None) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_safetensors({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()},
                         folder / "sae.safetensors")
        atomic_write_json(folder / "cfg.json", {"shape": asdict(self.shape), "run": run_config or {}})

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> "SAE":
        folder = Path(folder)
        cfg_path, w_path = folder / "cfg.json", folder / "sae.safetensors"
        for p in (cfg_path, w_path):
            if not p.exists():
                raise FileNotFoundError(f"{p} is missing: train the run first (python -m saelib train ...)")
        shape = SAEShape(**json.loads(cfg_path.read_text())["shape"])
        sae = cls(shape.d_in, shape.d_sae, shape.pre_encoder_bias)
        expected = {k: (tuple(v.shape), v.dtype) for k, v in sae.state_dict().items()}
        state = load_safetensors(w_path, expected)
        sae.load_state_dict(state)
        return sae.to(device)
