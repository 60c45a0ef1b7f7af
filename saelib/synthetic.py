"""The ground-truth source (SPEC "Ground truth"): activations drawn from a synthetic model with known feature
directions, sae-lens's `SyntheticModel` (Zipfian firing probabilities, a hierarchy with mutually exclusive
children, low-rank correlations, an orthogonalised dictionary, firing magnitudes), built from the profile's
`synthetic` settings and seed, saved once per profile (`data/synthetic/`), and scored against with sae-lens's
`eval_sae_on_synthetic_data`.

The stream is resumable: batch i is drawn under `torch.manual_seed(stream_seed + i)` (sae-lens samples from the
global generator; `fork_rng` keeps that local), so a checkpoint needs only the batch counter, and every run of a
profile sees the same samples. Held-out samples come from a seed no training batch uses.
"""

from __future__ import annotations

import contextlib
import time

import torch

from .config import ProfileConfig
from .io import ArtifactError, atomic_dir, atomic_write_json, file_digest, read_json

HELDOUT_OFFSET = 10**9  # held-out samples: stream seed + this (training batches use stream seed + i, i < steps)


def model_config(cfg: ProfileConfig):
    """sae-lens's SyntheticModelConfig from the profile's `synthetic` section."""
    from sae_lens.synthetic import (
        FoldedNormalMagnitudeConfig,
        HierarchyConfig,
        LinearMagnitudeConfig,
        LowRankCorrelationConfig,
        OrthogonalizationConfig,
        SyntheticModelConfig,
        ZipfianFiringProbabilityConfig,
    )

    s = cfg.synthetic
    return SyntheticModelConfig(
        num_features=s.num_features, hidden_dim=s.hidden_dim,
        firing_probability=ZipfianFiringProbabilityConfig(exponent=s.zipf_exponent, max_prob=s.max_prob,
                                                          min_prob=s.min_prob),
        hierarchy=HierarchyConfig(total_root_nodes=s.hierarchy_roots, branching_factor=s.branching_factor,
                                  max_depth=s.max_depth, mutually_exclusive_portion=s.mutually_exclusive_portion,
                                  mutually_exclusive_min_depth=0, compensate_probabilities=True,
                                  scale_children_by_parent=True) if s.hierarchy_roots else None,
        orthogonalization=OrthogonalizationConfig(num_steps=s.orthogonalization_steps, lr=3e-4)
        if s.orthogonalization_steps else None,
        correlation=LowRankCorrelationConfig(rank=s.correlation_rank, correlation_scale=s.correlation_scale)
        if s.correlation_rank else None,
        mean_firing_magnitudes=LinearMagnitudeConfig(start=s.magnitude_start, end=s.magnitude_end),
        std_firing_magnitudes=FoldedNormalMagnitudeConfig(mean=s.magnitude_std_mean, std=s.magnitude_std_std),
        bias=s.bias, seed=s.seed)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device):
    """The global generators (sae-lens samples from them) seeded for the block, restored afterwards."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def prepare(cfg: ProfileConfig) -> dict:
    """The data step of a synthetic profile: build the model (or copy `synthetic.model_path`), save it under
    `data/synthetic/`, and write `data/info.json` (its checksums, true L0, the stage's config hash)."""
    from sae_lens.synthetic import SyntheticModel

    from .lm import pick_device

    t0 = time.time()
    s = cfg.synthetic
    device = str(pick_device(cfg.train.device))  # building the standard world wants a GPU (its orthogonalisation)
    with contextlib.redirect_stdout(None):
        model = (SyntheticModel.load_from_disk(s.model_path, device=device) if s.model_path else
                 SyntheticModel(model_config(cfg), device=device))
    if model.feature_dict.feature_vectors.shape != (s.num_features, s.hidden_dim):
        raise ArtifactError(f"{s.model_path} holds a model of {tuple(model.feature_dict.feature_vectors.shape)} "
                            f"features x dimensions, the profile asks for ({s.num_features}, {s.hidden_dim})")
    folder = cfg.data_dir / "synthetic"
    with atomic_dir(folder) as tmp:
        model.save(str(tmp))
    with seeded(cfg.seed * 1_000_003 + HELDOUT_OFFSET, torch.device(device)):
        _, feats = model.sample_with_features(8192)
    info = {"source": "synthetic", "num_features": s.num_features, "hidden_dim": s.hidden_dim,
            "true_l0": float((feats > 0).float().sum(1).mean()),
            "files": {p.name: file_digest(p) for p in sorted(folder.iterdir())},
            "seconds": round(time.time() - t0, 2), "stage_hash": cfg.stage_hash("data")}
    atomic_write_json(cfg.data_dir / "info.json", info)
    return info


def load_model(cfg: ProfileConfig, device: torch.device | str = "cpu"):
    """The profile's saved synthetic model, checksum-verified; errors name the file and the step."""
    from sae_lens.synthetic import SyntheticModel

    made_by = cfg.command("data")
    info = read_json(cfg.data_dir / "info.json", made_by, keys=("files", "stage_hash"))
    if info["stage_hash"] != cfg.stage_hash("data"):
        raise ArtifactError(f"{cfg.data_dir} holds a synthetic model built from other `synthetic` settings than the "
                            f"profile's now; rebuild it: `{made_by}`")
    folder = cfg.data_dir / "synthetic"
    for name, digest in info["files"].items():
        path = folder / name
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing; rebuild: `{made_by}`")
        if file_digest(path) != digest:
            raise ArtifactError(f"{path} fails its checksum (its bytes changed after it was written); rebuild: "
                                f"`{made_by}`")
    try:
        with contextlib.redirect_stdout(None):
            return SyntheticModel.load_from_disk(str(folder), device=str(device))
    except Exception as e:  # a file sae-lens cannot read
        raise ArtifactError(f"{folder} is not a readable synthetic model ({type(e).__name__}: {e}); rebuild: "
                            f"`{made_by}`") from None


class SyntheticSource:
    """Training activations from the synthetic model: batch i under seed stream_seed + i (the trainer's source
    interface: `next_batch`, `peek`, `state_dict`, `load_state_dict`)."""

    def __init__(self, cfg: ProfileConfig, device: torch.device):
        self.model = load_model(cfg, device)
        self.device = device
        self.stream_seed = cfg.seed * 1_000_003
        self.batch = 0
        self.d_in = cfg.synthetic.hidden_dim

    def _draw(self, seed: int, n: int) -> torch.Tensor:
        with seeded(seed, self.device):
            return self.model.sample(n).to(self.device)

    def next_batch(self, n: int) -> torch.Tensor:
        x = self._draw(self.stream_seed + self.batch, n)
        self.batch += 1
        return x

    def peek(self, n: int) -> torch.Tensor:
        """`n` samples that no step sees (the geometric-median start of b_dec)."""
        return self._draw(self.stream_seed + HELDOUT_OFFSET - 1, n)

    def heldout(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(activations, true feature activations) of `n` held-out samples."""
        with seeded(self.stream_seed + HELDOUT_OFFSET, self.device):
            x, f = self.model.sample_with_features(n)
        return x.to(self.device), f.to(self.device)

    def state_dict(self) -> dict:
        return {"tensors": {}, "stream": {"batch": self.batch}}

    def load_state_dict(self, tensors: dict, stream: dict) -> None:
        self.batch = int(stream["batch"])


def ground_truth_metrics(model, sae, cfg: ProfileConfig, device: torch.device) -> dict:
    """sae-lens's scores of an SAE against the true features (MCC, uniqueness, per-latent precision / recall / F1
    of firing, explained variance, shrinkage, dead latents, L0s) on `eval.tokens` held-out samples."""
    from sae_lens.synthetic import eval_sae_on_synthetic_data

    with seeded(cfg.seed * 1_000_003 + HELDOUT_OFFSET, device), torch.no_grad():
        r = eval_sae_on_synthetic_data(sae, model.feature_dict, model.activation_generator,
                                       num_samples=cfg.eval.tokens, batch_size=cfg.eval.batch_sequences * 128)
    c = r.classification
    return {"mcc": float(r.mcc), "uniqueness": float(r.uniqueness), "precision": float(c.precision),
            "recall": float(c.recall), "f1": float(c.f1_score), "accuracy": float(c.accuracy),
            "explained_variance": float(r.explained_variance), "shrinkage": float(r.shrinkage),
            "true_l0": float(r.true_l0), "sae_l0_gt": float(r.sae_l0), "dead_latents_gt": int(r.dead_latents)}


@torch.no_grad()
def feature_recovery(W_dec_FD: torch.Tensor, truth_GD: torch.Tensor) -> dict[str, torch.Tensor]:
    """Which true features each latent points at, and how well each true feature is covered: per latent its best
    |cosine| among the true directions and which one; per true feature its best |cosine| among the latents and
    how many latents have it as their best (0: missed, > 1: split across latents)."""
    W = W_dec_FD / W_dec_FD.norm(dim=1, keepdim=True).clamp_min(1e-12)
    T = truth_GD / truth_GD.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cos = (W @ T.T).abs()  # (F, G)
    best_F, idx_F = cos.max(1)
    return {"latent_best_cos": best_F, "latent_best_truth": idx_F, "truth_best_cos": cos.max(0).values,
            "truth_n_latents": torch.bincount(idx_F, minlength=T.shape[0])}


@torch.no_grad()
def evaluate_synthetic(cfg: ProfileConfig, saes: list, eps: list[float], device: torch.device
                       ) -> list[tuple[dict, torch.Tensor, torch.Tensor]]:
    """Every SAE on the same `eval.tokens` held-out samples: this package's metrics (L0, MSEs, FVU, dead, dense; no
    cross-entropy: there is no LM), sae-lens's ground-truth scores, and per feature which true feature each latent
    points at (`features.safetensors`)."""
    from .evaluate import groups

    source = SyntheticSource(cfg, device)
    x_all, _ = source.heldout(cfg.eval.tokens)
    center = x_all.mean(0)
    widths, encoders, stats = groups(saes, eps, device)
    per = cfg.eval.batch_sequences * 128
    for i in range(0, len(x_all), per):
        x = x_all[i:i + per]
        for key, enc in encoders.items():
            f, x_hat = enc(x)
            stats[True, key].update(x, f, x_hat, center)
    truth = source.model.feature_dict.feature_vectors.detach()
    results = []
    for j, sae in enumerate(saes):
        key = next(k for k, js in widths.items() if j in js)
        r = widths[key].index(j)
        st = stats[True, key]
        out = st.summary(r) | ground_truth_metrics(source.model, sae, cfg, device)
        out["per_feature"] = {k: v.cpu() for k, v in feature_recovery(sae.W_dec.detach(), truth).items()}
        results.append((out, st.sparsity()[r].cpu(), st.max_act_RF[r].cpu()))
    return results
