"""Language models behind one interface: GPT-2 small through TransformerLens (`paper`) or the project's own
small GPT-2-architecture `HookedTransformer`, trained here and saved as safetensors (`tiny`, `smoke`)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import ConfigError, ProfileConfig
from .io import ArtifactError, atomic_write_json, load_safetensors, read_json, save_safetensors
from .text import Tokenizer, load_from_hub


def tiny_lm_fields(cfg: ProfileConfig, vocab_size: int) -> dict:
    """The TransformerLens settings of the project's own small LM (what `export` writes to rebuild it)."""
    lm = cfg.lm
    return dict(n_layers=lm.n_layers, d_model=lm.d_model, n_heads=lm.n_heads, d_head=lm.d_model // lm.n_heads,
                d_mlp=lm.d_mlp, n_ctx=cfg.activations.context, d_vocab=vocab_size, act_fn="gelu_new",
                normalization_type="LN", positional_embedding_type="standard", seed=cfg.seed,
                model_name="saelib-tiny", default_prepend_bos=False)


def tiny_lm_config(cfg: ProfileConfig, vocab_size: int):
    from transformer_lens import HookedTransformerConfig

    return HookedTransformerConfig(**tiny_lm_fields(cfg, vocab_size))


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"invalid value for `train.device`: {name} requested but CUDA is not available; use auto or cpu")
    return torch.device(name)


@torch.no_grad()
def heldout_loss(model, seqs: np.ndarray, batch: int = 32) -> float:
    """Mean next-token cross-entropy (nats) over all predicted positions of `seqs`."""
    device = next(model.parameters()).device
    total, n = 0.0, 0
    for i in range(0, len(seqs), batch):
        toks = torch.as_tensor(seqs[i:i + batch], device=device)
        loss = model(toks, return_type="loss", loss_per_token=True)
        total += float(loss.sum())
        n += loss.numel()
    return total / max(n, 1)


def train_lm(cfg: ProfileConfig, train_seqs: np.ndarray, heldout_seqs: np.ndarray, vocab_size: int,
             device: torch.device, progress: bool = True):
    """Train the small LM with AdamW, linear warm-up and cosine decay. Returns (model, log rows).

    Runs with torch's deterministic algorithms: the embedding's backward (an accumulating index_put) otherwise
    adds its rows in thread order on a multi-core CPU, and the LM, hence every result, changed slightly from
    one `make figures` to the next. (warn_only: ops without a deterministic version warn instead of failing.)"""
    prev, prev_warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        return _train_lm(cfg, train_seqs, heldout_seqs, vocab_size, device, progress)
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)


def _train_lm(cfg: ProfileConfig, train_seqs: np.ndarray, heldout_seqs: np.ndarray, vocab_size: int,
              device: torch.device, progress: bool = True):
    from transformer_lens import HookedTransformer

    lm = cfg.lm
    torch.manual_seed(cfg.seed)
    model = HookedTransformer(tiny_lm_config(cfg, vocab_size)).to(device)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": lm.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lm.lr, betas=(0.9, 0.95))
    warmup = max(1, lm.train_steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / lm.train_steps))))
    gen = torch.Generator().manual_seed(cfg.seed)
    rows, t0 = [], time.time()
    bar = tqdm(range(lm.train_steps), desc="LM", disable=not progress, mininterval=2)
    for step in bar:
        idx = torch.randint(len(train_seqs), (lm.batch_sequences,), generator=gen).numpy()
        toks = torch.as_tensor(train_seqs[idx], device=device)
        loss = model(toks, return_type="loss")
        if not torch.isfinite(loss):
            raise FloatingPointError(f"LM training diverged at step {step} (loss {float(loss)}); lower lm.lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == lm.train_steps - 1:
            bar.set_postfix(loss=f"{loss.item():.3f}")
            rows.append({"step": step, "train_loss": loss.item(), "seconds": time.time() - t0})
    model.eval()
    return model, rows


def save_lm(model, folder: Path, info: dict) -> None:
    save_safetensors({k: v.detach().cpu() for k, v in model.state_dict().items()}, folder / "model.safetensors")
    atomic_write_json(folder / "info.json", info)


def check_finite_weights(model, where: str, made_by: str) -> None:
    """An LM with NaN or Inf in its weights makes non-finite activations for every SAE: name it at load."""
    bad = [n for n, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise ArtifactError(f"{where}: the LM's weights hold NaN or Inf ({', '.join(bad[:4])}"
                            f"{', ...' if len(bad) > 4 else ''}); rebuild the LM: `{made_by}`")


def load_local_lm(cfg: ProfileConfig, device: torch.device):
    from transformer_lens import HookedTransformer

    from .data import load_tokenizer

    folder, made_by = cfg.lm_dir, cfg.command("lm")
    info = read_json(folder / "info.json", made_by, keys=("stage_hash",))
    if info["stage_hash"] != cfg.stage_hash("lm"):
        raise ArtifactError(f"{folder} holds an LM trained with other settings (lm, data or seed) than the profile's "
                            f"now; retrain it: `{made_by}`")
    tok = load_tokenizer(cfg)
    model = HookedTransformer(tiny_lm_config(cfg, tok.vocab_size))
    expected = {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}
    model.load_state_dict(load_safetensors(folder / "model.safetensors", expected, made_by=made_by))
    check_finite_weights(model, str(folder / "model.safetensors"), made_by)
    return model.to(device).eval(), tok


def load_pretrained_lm(cfg: ProfileConfig, device: torch.device):
    """GPT-2 small through TransformerLens. The hub is probed first (<= 10 s); without it only the local
    cache is tried, so an unreachable hub fails in seconds with what to do instead."""
    from transformer_lens import HookedTransformer

    model = load_from_hub(f"model {cfg.lm.name}",
                          lambda: HookedTransformer.from_pretrained(cfg.lm.name, device=str(device)))
    check_finite_weights(model, f"pretrained model {cfg.lm.name}", "clear its Hugging Face cache and download it again")
    if cfg.activations.context > model.cfg.n_ctx:
        raise ConfigError(f"invalid value for `activations.context`: {cfg.activations.context} is longer than "
                          f"{cfg.lm.name}'s context of {model.cfg.n_ctx} tokens")
    return model.eval(), Tokenizer(model.tokenizer, "hf")


def load_lm(cfg: ProfileConfig, device: torch.device | str = "cpu"):
    """(model, tokenizer) of the profile."""
    device = torch.device(device)
    if cfg.lm.source == "pretrained":
        return load_pretrained_lm(cfg, device)
    return load_local_lm(cfg, device)


def check_hook(model, hook: str) -> None:
    if hook not in model.hook_dict:
        valid = [h for h in model.hook_dict if h.startswith("blocks.0.")]
        raise ConfigError(f"invalid value for `activations.hook`: {hook!r} is not a hook of the model "
                          f"({model.cfg.n_layers} layers); hooks look like {', '.join(valid[:6])}, ...")

