"""The sparse autoencoder (SPEC "Definitions", SAE), its encoder and decoder, and its on-disk format.

    f     = ReLU(W_enc^T (x - p * b_dec) + b_enc)        # (B, F)
    x_hat = W_dec^T f + b_dec                             # (B, D)

Shapes: D = d_in, F = d_sae. W_enc is (D, F), W_dec is (F, D): one unit-norm row per feature. `encode_pre`
and `decode` are the one encoder and decoder: they take one SAE's parameters or a stack's (a leading run
axis R, see `stack.SAEStack`), and an optional subset of features (ghost gradients, feature analysis).
Saved as `sae.safetensors` (weights, with a checksum) + `cfg.json` (shapes, the run config, provenance).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from .io import atomic_write_json, load_safetensors, read_json, save_safetensors


def encode_pre(x_BD: torch.Tensor, W_enc_DF: torch.Tensor, b_enc_F: torch.Tensor, b_dec_D: torch.Tensor,
               pre_bias: bool | torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
    """Encoder pre-activation W_enc^T (x - p * b_dec) + b_enc, for every feature or only `features`.

    `pre_bias` is p: a bool for one SAE, an (R, 1, 1) 0/1 tensor for a stack (x - 0 * b_dec is x exactly; a
    stack without any pre-encoder bias passes False). x_BD is shared by every SAE of a stack: (B, D) ->
    (R, B, F)."""
    if features is not None:
        W_enc_DF, b_enc_F = W_enc_DF[..., features], b_enc_F[..., features]
    if torch.is_tensor(pre_bias):
        x_BD = x_BD - pre_bias * b_dec_D.unsqueeze(-2)
    elif pre_bias:
        x_BD = x_BD - b_dec_D
    if W_enc_DF.dim() == 2:
        return torch.addmm(b_enc_F, x_BD, W_enc_DF)
    if x_BD.dim() == 2:
        x_BD = x_BD.expand(W_enc_DF.shape[0], *x_BD.shape)
    return torch.baddbmm(b_enc_F.unsqueeze(-2), x_BD, W_enc_DF)


def decode(f_BF: torch.Tensor, W_dec_FD: torch.Tensor, b_dec_D: torch.Tensor) -> torch.Tensor:
    """x_hat = W_dec^T f + b_dec: (B, F) -> (B, D), or a stack's (R, B, F) -> (R, B, D)."""
    if W_dec_FD.dim() == 2:
        return torch.addmm(b_dec_D, f_BF, W_dec_FD)
    return torch.baddbmm(b_dec_D.unsqueeze(-2), f_BF, W_dec_FD)


@torch.no_grad()
def normalize_rows_(W_dec_FD: torch.Tensor) -> None:
    """Decoder rows to unit norm (SPEC: after every optimiser step)."""
    W_dec_FD.div_(W_dec_FD.norm(dim=-1, keepdim=True).clamp_min(1e-12))


@torch.no_grad()
def project_rows_(grad_FD: torch.Tensor | None, W_dec_FD: torch.Tensor) -> None:
    """Remove from each decoder row's gradient its component parallel to the row (SPEC: before the step).
    Rows are unit norm, so the parallel component is (g . w) w."""
    if grad_FD is None:
        return
    dot_F1 = torch.einsum("...fd,...fd->...f", grad_FD, W_dec_FD).unsqueeze(-1)  # no (F, D) temporary
    grad_FD.addcmul_(dot_F1, W_dec_FD, value=-1.0)


def kaiming_init(d_in: int, d_sae: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(W_enc (D, F), W_dec (F, D)): Kaiming-uniform, decoder rows then normalised to unit norm."""
    bound = (6 / d_in) ** 0.5
    W_dec = (torch.rand(d_sae, d_in, generator=generator) * 2 - 1) * bound
    W_enc = (torch.rand(d_in, d_sae, generator=generator) * 2 - 1) * bound
    normalize_rows_(W_dec)
    return W_enc, W_dec


class SAEOutput(NamedTuple):
    pre_BF: torch.Tensor  # pre-activation (before ReLU)
    f_BF: torch.Tensor  # feature activations a
    x_hat_BD: torch.Tensor  # reconstruction


@dataclass
class SAEShape:
    d_in: int
    d_sae: int
    pre_encoder_bias: bool


class SAE(nn.Module):
    """One trained SAE (evaluation, analysis, export). Training runs a stack of them (`stack.SAEStack`)."""

    def __init__(self, d_in: int, d_sae: int, pre_encoder_bias: bool = False, generator: torch.Generator | None = None):
        super().__init__()
        self.shape = SAEShape(d_in, d_sae, pre_encoder_bias)
        W_enc, W_dec = kaiming_init(d_in, d_sae, generator)
        self.W_enc = nn.Parameter(W_enc)
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.W_dec = nn.Parameter(W_dec)
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    @property
    def d_in(self) -> int:
        return self.shape.d_in

    @property
    def d_sae(self) -> int:
        return self.shape.d_sae

    def encode_pre(self, x_BD: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        return encode_pre(x_BD, self.W_enc, self.b_enc, self.b_dec, self.shape.pre_encoder_bias, features)

    def encode(self, x_BD: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        return torch.relu(self.encode_pre(x_BD, features))

    def decode(self, f_BF: torch.Tensor) -> torch.Tensor:
        return decode(f_BF, self.W_dec, self.b_dec)

    def forward(self, x_BD: torch.Tensor) -> SAEOutput:
        pre = self.encode_pre(x_BD)
        f = torch.relu(pre)
        return SAEOutput(pre, f, self.decode(f))

    # ---- files ----

    def save(self, folder: str | Path, run_config: dict | None = None, extra: dict | None = None) -> None:
        """`sae.safetensors` and `cfg.json` ({shape, run, **extra}) in `folder`."""
        folder = Path(folder)
        save_safetensors({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()},
                         folder / "sae.safetensors")
        atomic_write_json(folder / "cfg.json", {"shape": asdict(self.shape), "run": run_config or {}, **(extra or {})})

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu", made_by: str = "python -m saelib train") -> "SAE":
        """A trained run's SAE; the error names the file and `made_by`, the command that makes it."""
        folder = Path(folder)
        shape = SAEShape(**read_json(folder / "cfg.json", made_by, keys=("shape",))["shape"])
        sae = cls(shape.d_in, shape.d_sae, shape.pre_encoder_bias)
        expected = {k: (tuple(v.shape), v.dtype) for k, v in sae.state_dict().items()}
        sae.load_state_dict(load_safetensors(folder / "sae.safetensors", expected, made_by=made_by))
        return sae.to(device)
