"""Today's standard SAE architectures (TopK, BatchTopK, JumpReLU) in a training group, through sae-lens's own
training classes: each run is a sae-lens `TrainingSAE` stepped on the group's batch with its own Adam, as sae-lens's
`SAETrainer.step` does (its loss and auxiliary losses, gradient clipping at norm 1, its dead-latent window for the
auxiliary losses), so a group compares them with this package's SAEs on the same stream.

A trained run is saved as sae-lens's inference model (`sae_lens/`: a TopK SAE, or a JumpReLU SAE for JumpReLU and
for BatchTopK with its learned global threshold) beside this package's `cfg.json` and `metrics.csv`;
`load_inference` reads it back for evaluation.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import torch

from . import losses as L
from .config import RunConfig, TrainConfig
from .io import file_digest, read_json
from .kernels import colsum, firing_counts

INFERENCE = "sae_lens"  # the run folder's sae-lens inference model


def training_sae(run: RunConfig, d_in: int, device):
    """sae-lens's training SAE of a run (weights seeded by the caller)."""
    from sae_lens import (
        BatchTopKTrainingSAE,
        BatchTopKTrainingSAEConfig,
        JumpReLUTrainingSAE,
        JumpReLUTrainingSAEConfig,
        TopKTrainingSAE,
        TopKTrainingSAEConfig,
    )

    d_sae = run.d_sae(d_in)
    common = dict(d_in=d_in, d_sae=d_sae, device=str(device), apply_b_dec_to_input=run.pre_encoder_bias)
    if run.architecture == "topk":
        return TopKTrainingSAE(TopKTrainingSAEConfig(k=run.k, **common))
    if run.architecture == "batchtopk":
        return BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(k=run.k, **common))
    if run.architecture == "jumprelu":
        return JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(
            l0_coefficient=run.lambda_sparsity, jumprelu_bandwidth=run.jumprelu_bandwidth,
            jumprelu_init_threshold=run.jumprelu_init_threshold, **common))
    raise ValueError(f"not a sae-lens architecture: {run.architecture}")


class SaeLensRun:
    """One run of a sae-lens architecture, with the stack's interface (a group of one)."""

    def __init__(self, name: str, run: RunConfig, d_in: int, train: TrainConfig, device, seed: int):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.sae = training_sae(run, d_in, device)
        self.names, self.runs = [name], [run]
        self.d_in, self.d_sae = d_in, run.d_sae(d_in)
        self.opt = torch.optim.Adam(self.sae.parameters(), lr=train.lr, betas=(train.adam_beta1, train.adam_beta2))
        self.steps_since_fired = torch.zeros(self.d_sae, dtype=torch.long, device=device)
        self.dead_window = run.dead_window
        self.n_steps = 0
        self.windows = [None]

    def __len__(self) -> int:
        return 1

    def coefficients(self) -> dict:
        from sae_lens.saes.sae import TrainCoefficientConfig

        return {k: (v.value if isinstance(v, TrainCoefficientConfig) else v)
                for k, v in self.sae.get_coefficients().items()}

    def step(self, x_BD: torch.Tensor, lr: float, autocast: bool = False, check=None):
        from sae_lens.saes.sae import TrainStepInput

        for g in self.opt.param_groups:
            g["lr"] = lr
        self.sae.train()
        with torch.autocast("cuda", torch.bfloat16, enabled=autocast):
            out = self.sae.training_forward_pass(TrainStepInput(
                sae_in=x_BD, coefficients=self.coefficients(), dead_neuron_mask=self.steps_since_fired > self.dead_window,
                n_training_steps=self.n_steps, is_logging_step=False))
        terms = self.terms(out)
        if check is not None:
            check(terms)
        self.opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(self.sae.parameters(), 1.0)  # as sae-lens's SAETrainer
        self.opt.step()
        with torch.no_grad():
            fired = (out.feature_acts != 0).any(0)
            self.steps_since_fired.add_(1).masked_fill_(fired, 0)
        self.n_steps += 1
        return out, terms

    @staticmethod
    def terms(out) -> L.LossTerms:
        """sae-lens's loss terms under this package's names: its MSE (summed over d_in) as `mse`, its auxiliary
        loss (AuxK, or JumpReLU's L0 and pre-activation losses) as `sparsity`; one value per run (R = 1)."""
        mse = out.losses.get("mse_loss", out.loss.new_zeros(()))
        aux = sum((v for k, v in out.losses.items() if k != "mse_loss"), out.loss.new_zeros(()))
        zero = out.loss.new_zeros(())
        return L.LossTerms(*(t.detach().reshape(1) if t is not out.loss else t.reshape(1) for t in
                             (mse, aux, zero, zero, out.loss)))

    @torch.no_grad()
    def log_rows(self, x_BD: torch.Tensor, out, terms: L.LossTerms) -> list[dict]:
        f, x_hat = out.feature_acts.float(), out.sae_out.float()
        B = f.shape[0]
        err = (x_hat - x_BD).pow(2)
        var = (x_BD - x_BD.mean(0)).pow(2).sum()
        cols = {"loss": terms.total, "mse_term": terms.mse, f"{self.runs[0].architecture}_aux_term": terms.sparsity,
                "l0": L.l0(firing_counts(f.abs()), B), "l1": L.l1(colsum(f), B), "mse_legacy": L.legacy_mse(x_hat, x_BD),
                "mse": err.mean(), "fvu": err.sum() / var.clamp_min(1e-12),
                "dead_rolling": (self.steps_since_fired > self.dead_window).sum()}
        return [{k: float(v.reshape(-1)[0]) for k, v in cols.items()}]

    # ---- checkpoints ----

    def run_tensors(self, i: int) -> dict[str, torch.Tensor]:
        out = {f"sae.{k}": v for k, v in self.sae.state_dict().items()}
        for j, p in enumerate(self.sae.parameters()):
            for k, v in self.opt.state.get(p, {}).items():
                out[f"adam.{j}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
        out["steps_since_fired"] = self.steps_since_fired
        out["n_steps"] = torch.tensor(self.n_steps)
        return out

    @torch.no_grad()
    def load_run_tensors(self, i: int, state: dict[str, torch.Tensor]) -> None:
        self.sae.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("sae.")})
        for j, p in enumerate(self.sae.parameters()):
            s = {k.split(".", 2)[2]: v.to(p.device) for k, v in state.items() if k.startswith(f"adam.{j}.")}
            if s:
                s["step"] = s["step"].cpu()  # the per-tensor Adam keeps its step count on the CPU
                self.opt.state[p] = s
        self.steps_since_fired.copy_(state["steps_since_fired"])
        self.n_steps = int(state["n_steps"])

    def finite(self) -> torch.Tensor:
        tensors = list(self.sae.parameters()) + [v for st in self.opt.state.values() for k, v in st.items()
                                                 if torch.is_tensor(v) and k != "step"]
        return torch.tensor([all(bool(torch.isfinite(t).all()) for t in tensors)])

    # ---- the trained run ----

    def save_run(self, i: int, folder: Path, run_config: dict, extra: dict) -> None:
        """sae-lens's inference model under `sae_lens/`, and this package's cfg.json beside it."""
        from .io import atomic_write_json

        self.sae.eval()
        with contextlib.redirect_stdout(io.StringIO()):
            self.sae.save_inference_model(str(folder / INFERENCE))
        files = {f"{INFERENCE}/{p.name}": file_digest(p) for p in sorted((folder / INFERENCE).iterdir())}
        atomic_write_json(folder / "cfg.json", {
            "shape": {"d_in": self.d_in, "d_sae": self.d_sae, "pre_encoder_bias": self.runs[0].pre_encoder_bias},
            "run": run_config, **extra, "files": {**extra.get("files", {}), **files}})


class InferenceSAE(torch.nn.Module):
    """A trained TopK / BatchTopK / JumpReLU run for evaluation: sae-lens's inference model with the few members
    the evaluation and analyses use (`encode`, `decode`, `W_dec`, `d_in`, `d_sae`)."""

    def __init__(self, sl_sae, architecture: str):
        super().__init__()
        self.sl, self.architecture = sl_sae, architecture
        self.d_in, self.d_sae = sl_sae.cfg.d_in, sl_sae.cfg.d_sae

    @property
    def W_dec(self) -> torch.Tensor:
        return self.sl.W_dec

    def encode(self, x_BD: torch.Tensor) -> torch.Tensor:
        return self.sl.encode(x_BD)

    def decode(self, f_BF: torch.Tensor) -> torch.Tensor:
        return self.sl.decode(f_BF)

    def state_dict(self, *a, **k):
        return self.sl.state_dict(*a, **k)


def load_inference(folder: Path, made_by: str, device="cpu") -> InferenceSAE:
    """A saved sae-lens-architecture run, its files checked against the checksums in its cfg.json."""
    from sae_lens import SAE as SaeLensSAE

    from .io import ArtifactError

    meta = read_json(folder / "cfg.json", made_by, keys=("files", "run"))
    for name, digest in meta["files"].items():
        if name.startswith(INFERENCE) and file_digest(folder / name) != digest:
            raise ArtifactError(f"{folder / name} fails its checksum; rerun `{made_by}`")
    with contextlib.redirect_stdout(io.StringIO()):
        sl = SaeLensSAE.load_from_disk(str(folder / INFERENCE), device=str(device))
    return InferenceSAE(sl, meta["run"]["architecture"]).to(device)
