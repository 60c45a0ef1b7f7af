"""Interop with sae-lens (SPEC "Beyond the post"): our runs exported in its on-disk format, and its standard
(ReLU) SAEs turned into ours so that the same evaluation code runs on both.

The sae-lens 6.x folder format, as `SAE.load_from_disk` reads it:
  cfg.json                 {"architecture": "standard", "d_in", "d_sae", "dtype", "device",
                            "apply_b_dec_to_input", "normalize_activations", "reshape_activations",
                            "metadata": {"sae_lens_version", "hook_name", "model_name", ...}}
  sae_weights.safetensors  W_enc (d_in, d_sae), b_enc (d_sae,), W_dec (d_sae, d_in), b_dec (d_in,)
  sparsity.safetensors     optional: "sparsity" = log10(s_f + 1e-10) (not read by load_from_disk)
Its standard SAE computes f = ReLU((x - b_dec * apply_b_dec_to_input) @ W_enc + b_enc) and
x_hat = f @ W_dec + b_dec: our SAE with apply_b_dec_to_input = pre_encoder_bias, weights unchanged.
A config without `metadata.sae_lens_version` >= 6 is taken as a pre-6.0 config and renamed on load, so
the version is always written.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .io import atomic_write_json, load_safetensors, save_safetensors
from .sae import SAE

SAE_LENS_CFG = "cfg.json"
SAE_LENS_WEIGHTS = "sae_weights.safetensors"
SAE_LENS_SPARSITY = "sparsity.safetensors"
SAE_LENS_FORMAT_VERSION = "6.54.12"  # the sae-lens release whose format this writes (and the tests read with)
REFERENCE_RELEASE = ("gpt2-small-res-jb", "blocks.1.hook_resid_pre")  # the `paper` profile's L1 reference


# ---- ours -> sae-lens ----

def sae_lens_config(sae: SAE, hook_name: str, model_name: str | None = None, context_size: int | None = None,
                    extra_metadata: dict | None = None) -> dict:
    """The cfg.json dict of `sae` in sae-lens's format."""
    return {
        "architecture": "standard",
        "d_in": sae.d_in, "d_sae": sae.d_sae,
        "dtype": str(sae.W_enc.dtype).removeprefix("torch."), "device": "cpu",
        "apply_b_dec_to_input": sae.shape.pre_encoder_bias,
        "normalize_activations": "none", "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": SAE_LENS_FORMAT_VERSION,
            "sae_lens_training_version": None,  # trained by saelib, not sae-lens
            "model_name": model_name, "hook_name": hook_name, "hook_head_index": None,
            "context_size": context_size, "prepend_bos": True,  # every sequence starts with BOS (text.pack)
            "model_from_pretrained_kwargs": {},
            **(extra_metadata or {}),
        },
    }


def write_sae_lens(sae: SAE, folder: str | Path, hook_name: str, model_name: str | None = None,
                   context_size: int | None = None, extra_metadata: dict | None = None,
                   sparsity_F: torch.Tensor | None = None) -> Path:
    """Write `sae` into `folder` in sae-lens's format (each file atomically)."""
    folder = Path(folder)
    state = {k: getattr(sae, k).detach().cpu().contiguous() for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
    save_safetensors(state, folder / SAE_LENS_WEIGHTS)
    if sparsity_F is not None:  # sae-lens keeps log10 feature sparsity, dead features at -10
        save_safetensors({"sparsity": torch.log10(sparsity_F.float().cpu() + 1e-10)}, folder / SAE_LENS_SPARSITY)
    atomic_write_json(folder / SAE_LENS_CFG, sae_lens_config(sae, hook_name, model_name, context_size,
                                                             extra_metadata))
    return folder


def _read_run(run_folder: Path) -> dict:
    """The run's cfg.json, after checking that the folder is a trained saelib run."""
    if not run_folder.is_dir():
        raise FileNotFoundError(f"{run_folder} is not a folder: give a run folder such as "
                                "results/<profile>/runs/<run>")
    cfg_path = run_folder / "cfg.json"
    if not cfg_path.exists() or not (run_folder / "sae.safetensors").exists():
        raise FileNotFoundError(f"{run_folder} is not a trained saelib run: cfg.json and sae.safetensors are "
                                "needed (python -m saelib train ...)")
    try:
        cfg = json.loads(cfg_path.read_text())
        cfg["shape"]["d_in"], cfg.get("hook") or cfg["run"]["hook"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{cfg_path} is not a saelib run config ({type(e).__name__}: {e}); "
                         "is this an sae-lens folder or another tool's?") from None
    return cfg


def _info(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _profile_of(meta: dict):
    """The config a run was trained with (from its cfg.json), or None for a run folder made by other means."""
    from .config import ConfigError, load_profile

    try:
        return load_profile(meta["profile_arg"], meta.get("overrides") or {})
    except (KeyError, ConfigError, FileNotFoundError):
        return None


def write_lm(cfg, folder: Path) -> dict:
    """The project's own LM in `folder`: its weights, the TransformerLens settings that rebuild it, its tokenizer as a
    Hugging Face tokenizer folder, and the profile's held-out tokens (eval.tokens of them). `load_exported_lm`
    reads it back; the exported SAE's metadata names both."""
    from transformers import PreTrainedTokenizerFast

    from .data import load_tokenizer
    from .evaluate import heldout_sequences
    from .io import save_npy
    from .lm import tiny_lm_fields

    tok = load_tokenizer(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(cfg.lm_dir / "model.safetensors", folder / "model.safetensors")
    atomic_write_json(folder / "transformer_lens_config.json", tiny_lm_fields(cfg, tok.vocab_size), checksum=False)
    bos = tok.backend.id_to_token(tok.bos_id)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok.backend, bos_token=bos, eos_token=bos, pad_token=bos)
    hf.save_pretrained(str(folder / "tokenizer"))
    save_npy(folder / "heldout_tokens.npy", heldout_sequences(cfg))
    return {"loader": "saelib.export.load_exported_lm", "path": folder.name, "bos_id": tok.bos_id}


def load_exported_lm(folder: str | Path, device: str = "cpu"):
    """(HookedTransformer with its tokenizer attached, held-out tokens (N, context)) from an export's `lm/` folder
    (or the export folder itself)."""
    import numpy as np
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import AutoTokenizer

    folder = Path(folder)
    folder = folder / "lm" if (folder / "lm").is_dir() else folder
    fields = json.loads((folder / "transformer_lens_config.json").read_text())
    model = HookedTransformer(HookedTransformerConfig(**fields))
    model.load_state_dict(load_safetensors(folder / "model.safetensors"))
    model.set_tokenizer(AutoTokenizer.from_pretrained(str(folder / "tokenizer")))
    return model.to(device).eval(), np.load(folder / "heldout_tokens.npy", allow_pickle=False)


def saelens_evals(folder: str | Path, exclude_special_tokens: bool = True, batch_size_prompts: int = 32,
                  device: str = "cpu") -> dict:
    """sae-lens's own `run_evals` on an exported SAE with its exported LM and held-out tokens (the recipe of the
    README): the reconstruction, sparsity and variance metrics and the cross-entropy losses, flattened. Each
    group of metrics gets a fresh activation store (one store's batches would move on between them)."""
    import datasets
    from sae_lens import SAE as SaeLensSAE
    from sae_lens import ActivationsStore, run_evals
    from sae_lens.evals import EvalConfig
    from sae_lens.training.activation_scaler import ActivationScaler

    folder = Path(folder)
    sae = SaeLensSAE.load_from_disk(str(folder), device=device)
    model, tokens = load_exported_lm(folder, device)
    n, ctx = tokens.shape
    n_batches = -(-n // batch_size_prompts)
    ignore = [model.tokenizer.bos_token_id] if exclude_special_tokens else False  # the tokenizer's BOS, explicitly

    def store():
        return ActivationsStore(model=model, dataset=datasets.Dataset.from_dict({"tokens": tokens.tolist()}),
                                streaming=False, hook_name=sae.cfg.metadata.hook_name, hook_head_index=None,
                                context_size=ctx, d_in=sae.cfg.d_in, n_batches_in_buffer=2,
                                total_training_tokens=tokens.size, store_batch_size_prompts=batch_size_prompts,
                                train_batch_size_tokens=ctx, prepend_bos=False, normalize_activations="none",
                                device=torch.device(device), dtype="float32")

    ce, _ = run_evals(sae, store(), model, ActivationScaler(), EvalConfig(
        batch_size_prompts=batch_size_prompts, n_eval_reconstruction_batches=n_batches, compute_ce_loss=True),
        exclude_special_tokens=ignore)
    sv, _ = run_evals(sae, store(), model, ActivationScaler(), EvalConfig(
        batch_size_prompts=batch_size_prompts, n_eval_reconstruction_batches=0,
        n_eval_sparsity_variance_batches=n_batches, compute_sparsity_metrics=True, compute_variance_metrics=True),
        exclude_special_tokens=ignore)
    out = {}
    for group in (ce, sv):
        for section in group.values():
            if isinstance(section, dict):
                out |= {k: v for k, v in section.items() if isinstance(v, (int, float))}
    return out


def export_run(run_folder: str | Path, out: str | Path, force: bool = False) -> Path:
    """Export a trained run folder to `out` in sae-lens's format. The folder is built beside `out` and renamed
    into place; an existing non-empty `out` is refused unless `force`."""
    run_folder, out = Path(run_folder), Path(out)
    cfg = _read_run(run_folder)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ValueError(f"{out} exists and is not empty: choose another folder or pass --force to replace it")
    sae = SAE.load(run_folder)
    profile = _profile_of(cfg)
    name = cfg.get("name", run_folder.name)
    eval_dir = profile.eval_dir(name) if profile else run_folder
    data_dir = profile.data_dir if profile else run_folder.parent.parent / "data"
    lm_dir = profile.lm_dir if profile else run_folder.parent.parent / "lm"
    feats = eval_dir / "features.safetensors"
    sparsity = load_safetensors(feats)["sparsity"] if feats.exists() else None
    hook = cfg.get("hook") or cfg["run"]["hook"]
    extra = {"saelib_run": cfg["run"] | {"hook": hook}, "saelib_eval": _info(eval_dir / "eval.json") or None}
    lm_name = _info(lm_dir / "info.json").get("name")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        os.chmod(tmp, out.parent.stat().st_mode & 0o777)  # mkdtemp makes 0700 folders
        if profile is not None and profile.lm.source == "train" and (lm_dir / "model.safetensors").exists():
            # our own LM is no TransformerLens model name: ship what rebuilds it, and its held-out tokens
            extra["saelib_lm"] = write_lm(profile, tmp / "lm")
            lm_name = f"saelib-tiny (not a TransformerLens name: load it with {extra['saelib_lm']['loader']})"
        write_sae_lens(sae, tmp, hook, lm_name, _info(data_dir / "info.json").get("context"), extra, sparsity)
        if out.is_dir() and any(out.iterdir()):  # --force: move the old export aside, then swap
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / "x")
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)  # rename(2) replaces an empty folder
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


# ---- sae-lens -> ours ----

@torch.no_grad()
def from_sae_lens(sl_sae, fold_decoder_norm: bool = True) -> SAE:
    """Our SAE with the same encode/decode as a loaded sae-lens standard (ReLU) SAE.

    `fold_decoder_norm`: decoder rows not of unit norm are rescaled to unit norm and the encoder (W_enc
    columns and b_enc) by the same factor, which leaves x_hat unchanged and puts f on the unit-norm scale our
    L1 numbers assume. Our own exports have unit rows, so they come back unchanged either way.
    """
    cfg = sl_sae.cfg
    arch = cfg.architecture()
    problems = [f"architecture {arch!r} (only 'standard' ReLU SAEs)"] if arch != "standard" else []
    if cfg.normalize_activations != "none":
        problems.append(f"normalize_activations={cfg.normalize_activations!r} (only 'none')")
    if getattr(cfg, "reshape_activations", "none") != "none":
        problems.append(f"reshape_activations={cfg.reshape_activations!r} (only 'none')")
    if problems:
        raise ValueError("cannot turn this sae-lens SAE into a saelib SAE: " + "; ".join(problems))
    sae = SAE(cfg.d_in, cfg.d_sae, pre_encoder_bias=bool(cfg.apply_b_dec_to_input))
    W_enc_DF, b_enc_F = sl_sae.W_enc.float().cpu(), sl_sae.b_enc.float().cpu()
    W_dec_FD, b_dec_D = sl_sae.W_dec.float().cpu(), sl_sae.b_dec.float().cpu()
    if fold_decoder_norm:
        # ReLU(n z) = n ReLU(z) for n > 0, so scaling feature f's encoder by n_f and its decoder row by 1/n_f
        # leaves x_hat unchanged
        n_F = W_dec_FD.norm(dim=1).clamp_min(1e-8)
        W_dec_FD, W_enc_DF, b_enc_F = W_dec_FD / n_F[:, None], W_enc_DF * n_F, b_enc_F * n_F
    for name, t in (("W_enc", W_enc_DF), ("b_enc", b_enc_F), ("W_dec", W_dec_FD), ("b_dec", b_dec_D)):
        getattr(sae, name).copy_(t)
    return sae


def load_sae_lens(folder_or_release: str | Path, sae_id: str | None = None, device: str = "cpu",
                  fold_decoder_norm: bool = True) -> SAE:
    """A saelib SAE from an sae-lens folder on disk, or from a released SAE (`release`, `sae_id`; e.g.
    `REFERENCE_RELEASE`) loaded through the hub, failing fast with what to do when the hub is unreachable."""
    from sae_lens import SAE as SaeLensSAE

    path = Path(folder_or_release)
    if path.is_dir():
        if not (path / SAE_LENS_CFG).exists() or not (path / SAE_LENS_WEIGHTS).exists():
            raise FileNotFoundError(f"{path} is not an sae-lens folder: {SAE_LENS_CFG} and {SAE_LENS_WEIGHTS} "
                                    "are needed")
        sl_sae = SaeLensSAE.load_from_disk(str(path), device="cpu")
    elif sae_id is None:
        raise FileNotFoundError(f"{folder_or_release} is not a folder; to load a released SAE give its sae_id "
                                f"too, e.g. load_sae_lens({REFERENCE_RELEASE[0]!r}, {REFERENCE_RELEASE[1]!r})")
    else:
        from .text import HubUnreachableError, load_from_hub

        try:
            sl_sae = load_from_hub(f"SAE {folder_or_release}/{sae_id}",
                                   lambda: SaeLensSAE.from_pretrained(str(folder_or_release), sae_id, device="cpu"))
        except HubUnreachableError as e:
            raise HubUnreachableError(f"{e}\n  3. or copy the release's {sae_id}/ folder ({SAE_LENS_CFG} and "
                                      f"{SAE_LENS_WEIGHTS}) here and call load_sae_lens(that_folder).") from None
    return from_sae_lens(sl_sae, fold_decoder_norm).to(device)
