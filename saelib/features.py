"""High-density features (SPEC "Beyond the post"): which features fire on more than 10% of held-out tokens,
and what they fire on.

For a set of features, one pass over the held-out sequences (the LM run only as far as the hook) collects:
- the top-k activating tokens of each feature (a streaming top-k: memory k per feature);
- samples from bands of the activation range, as fractions of the feature's max (`[0, 0.1)`, `[0.1, 0.2)`
  (around 10% of the max), ..., `[0.9, 1.0]`): every firing token draws a seeded uniform priority and each
  band keeps the `per_band` lowest priorities, a uniform sample without replacement of the band's tokens;
- how often the feature fires at each position in the context (positional features).

Bands are relative to the max over the same tokens, so the max is needed before the pass: `evaluate` writes it
(`features.safetensors`), and without it `feature_scan` makes a first pass.
Results are plain pandas tables; `add_contexts` puts text around each token and `render_contexts_html` shows
it in a notebook.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from .activations import hook_activations
from .sae import SAE

DEFAULT_BANDS: tuple[tuple[float, float], ...] = tuple((i / 10, (i + 1) / 10) for i in range(10))
MAX_TOLERANCE = 1e-4  # relative: the max from `evaluate` may differ from this pass's by float rounding


@dataclass
class FeatureExamples:
    top: pd.DataFrame  # feature, rank, act, seq, pos: the k largest activations, largest first
    bands: pd.DataFrame  # feature, band, lo, hi, act, frac, seq, pos: samples per band of act / max
    positions: pd.DataFrame  # index feature, columns 0..context-1: firing counts per position
    summary: pd.DataFrame  # index feature: fires, s_f, max_act
    n_tokens: int


def dense_features(s_F: torch.Tensor, threshold: float = 0.1) -> pd.DataFrame:
    """Features with s_f > threshold, densest first (columns feature, s_f)."""
    s = s_F.detach().float().cpu()
    ids = torch.nonzero(s > threshold).flatten()
    ids = ids[torch.argsort(s[ids], descending=True, stable=True)]
    return pd.DataFrame({"feature": ids.numpy().astype(np.int64), "s_f": s[ids].numpy()})


def _batches(seqs_NS: np.ndarray, batch_sequences: int, device: torch.device):
    for i in range(0, len(seqs_NS), batch_sequences):
        yield i, torch.as_tensor(seqs_NS[i:i + batch_sequences], device=device, dtype=torch.long)


def _encode(model, sae: SAE, toks: torch.Tensor, hook: str, features: torch.Tensor | None,
            exclude_id: int | None) -> torch.Tensor:
    """Activations (T, K) of `features` (all: None) on a batch of sequences; positions holding `exclude_id` (BOS,
    as the evaluation leaves them out) are zero."""
    f_TK = sae.encode(hook_activations(model, toks, hook).reshape(-1, sae.d_in), features)
    if exclude_id is not None:
        f_TK = f_TK * (toks != exclude_id).reshape(-1, 1)
    return f_TK


def _kept(seqs_NS: np.ndarray, exclude_id: int | None) -> int:
    return int(seqs_NS.size if exclude_id is None else (seqs_NS != exclude_id).sum())


@torch.no_grad()
def feature_scan(model, sae: SAE, seqs_NS: np.ndarray, hook: str, batch_sequences: int = 32,
                 exclude_id: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(s_F, max_act_F) over all features: the first pass when `evaluate`'s features.safetensors is absent."""
    device = next(model.parameters()).device
    fires_F = torch.zeros(sae.d_sae, dtype=torch.float64, device=device)
    max_F = torch.zeros(sae.d_sae, device=device)
    for _, toks in _batches(seqs_NS, batch_sequences, device):
        f_TF = _encode(model, sae, toks, hook, None, exclude_id)
        fires_F += (f_TF > 0).sum(0)
        torch.maximum(max_F, f_TF.max(0).values, out=max_F)
    return (fires_F / _kept(seqs_NS, exclude_id)).float().cpu(), max_F.cpu()


def _keep(key_KM: torch.Tensor, idx_KM: torch.Tensor, act_KM: torch.Tensor, key_KT: torch.Tensor,
          idx_T: torch.Tensor, act_KT: torch.Tensor, m: int, largest: bool):
    """Merge the kept (K, m) entries with a batch's (K, T) candidates, keeping the m largest (or smallest) keys
    with their token indices and activations."""
    v, j = key_KT.topk(min(m, key_KT.shape[1]), dim=1, largest=largest)
    key = torch.cat([key_KM, v], dim=1)
    idx = torch.cat([idx_KM, idx_T[j]], dim=1)
    act = torch.cat([act_KM, act_KT.gather(1, j)], dim=1)
    key, j = key.topk(m, dim=1, largest=largest)
    return key, idx.gather(1, j), act.gather(1, j)


def _in_band(frac_TK: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    # half-open [lo, hi), except that a band ending at the max includes it
    return (frac_TK >= lo) & ((frac_TK < hi) | ((hi >= 1.0) & (frac_TK <= hi)))


@torch.no_grad()
def collect_examples(model, sae: SAE, seqs_NS: np.ndarray, hook: str, features: Sequence[int], k: int = 20,
                     bands: Sequence[tuple[float, float]] = DEFAULT_BANDS, per_band: int = 5,
                     max_act_F: torch.Tensor | None = None, seed: int = 0,
                     batch_sequences: int = 32, exclude_id: int | None = None) -> FeatureExamples:
    """Top-k tokens, band samples and position counts of `features`, in one pass over `seqs_NS` (N, S).

    `max_act_F` (all d_sae features, over these same sequences) sets the bands; None runs `feature_scan`
    first. Samples are reproducible for a given seed, feature list and batch_sequences. Positions holding
    `exclude_id` (BOS, when the evaluation leaves it out) never count as firing.
    """
    if k < 1 or per_band < 1 or not bands:
        raise ValueError(f"need k >= 1, per_band >= 1 and at least one band; got k={k}, per_band={per_band}, "
                         f"bands={list(bands)}")
    device = next(model.parameters()).device
    S = seqs_NS.shape[1]
    if max_act_F is None:
        max_act_F = feature_scan(model, sae, seqs_NS, hook, batch_sequences, exclude_id)[1]
    feats_K = torch.as_tensor(list(features), dtype=torch.long, device=device)
    K = len(feats_K)
    max_K = max_act_F.to(device)[feats_K].float()
    scale_K = max_K.clamp_min(1e-30)
    gen = torch.Generator().manual_seed(seed)

    # kept state: top-k (key = activation) and per band the lowest priorities (key = uniform priority)
    top = (torch.full((K, k), -torch.inf, device=device), torch.full((K, k), -1, dtype=torch.long, device=device),
           torch.zeros(K, k, device=device))
    band = [(torch.full((K, per_band), torch.inf, device=device),
             torch.full((K, per_band), -1, dtype=torch.long, device=device),
             torch.zeros(K, per_band, device=device)) for _ in bands]
    pos_SK = torch.zeros(S, K, dtype=torch.long, device=device)
    for i, toks in _batches(seqs_NS, batch_sequences, device):
        f_TK = _encode(model, sae, toks, hook, feats_K, exclude_id)
        tok_T = torch.arange(i * S, i * S + f_TK.shape[0], device=device)  # flat index: seq * S + pos
        fired_TK = f_TK > 0
        pos_SK += fired_TK.reshape(toks.shape[0], S, K).sum(0)
        f_KT = f_TK.T
        top = _keep(*top, torch.where(fired_TK, f_TK, -torch.inf).T, tok_T, f_KT, k, largest=True)
        u_TK = torch.rand(f_TK.shape, generator=gen).to(device)
        frac_TK = (f_TK / scale_K).clamp_max(1.0)  # a max equal up to rounding counts as the max
        for b, (lo, hi) in enumerate(bands):
            pri_TK = torch.where(fired_TK & _in_band(frac_TK, lo, hi), u_TK, torch.inf)
            band[b] = _keep(*band[b], pri_TK.T, tok_T, f_KT, per_band, largest=False)

    seen_max_K = top[0][:, 0].clamp_min(0)
    bad = seen_max_K > max_K * (1 + MAX_TOLERANCE) + 1e-12
    if bool(bad.any()):
        f = int(feats_K[bad][0])
        raise ValueError(f"max_act_F does not match these sequences (feature {f}: max {float(max_K[bad][0]):.6g} "
                         f"given, {float(seen_max_K[bad][0]):.6g} seen): pass max_act_F=None or rerun `evaluate`")

    feats = feats_K.cpu().numpy()
    top_df = _rows(feats, top[1], top[2], torch.isfinite(top[0]), S).rename(columns={"slot": "rank"})
    parts = []
    for b, ((lo, hi), (pri, idx, act)) in enumerate(zip(bands, band)):
        frac_KM = (act / scale_K[:, None]).clamp_max(1.0)  # the same division that chose the band
        parts.append(_rows(feats, idx, act, torch.isfinite(pri), S, frac=frac_KM).assign(band=b, lo=lo, hi=hi))
    bands_df = pd.concat(parts, ignore_index=True)[["feature", "band", "lo", "hi", "act", "frac", "seq", "pos"]]
    fires = pos_SK.sum(0).cpu().numpy()
    index = pd.Index(feats, name="feature")
    return FeatureExamples(
        top=top_df[["feature", "rank", "act", "seq", "pos"]], bands=bands_df,
        positions=pd.DataFrame(pos_SK.T.cpu().numpy(), index=index, columns=range(S)),
        summary=pd.DataFrame({"fires": fires, "s_f": fires / _kept(seqs_NS, exclude_id),
                              "max_act": max_K.cpu().numpy()}, index=index),
        n_tokens=_kept(seqs_NS, exclude_id))


def _rows(feats: np.ndarray, idx_KM: torch.Tensor, act_KM: torch.Tensor, keep_KM: torch.Tensor, S: int,
          **extra_KM: torch.Tensor) -> pd.DataFrame:
    """Long table of the kept entries of (K, M) tensors: feature, slot, act, seq, pos and `extra_KM` columns."""
    K, M = idx_KM.shape
    keep = keep_KM.cpu().numpy().ravel()
    idx = idx_KM.cpu().numpy().ravel()[keep]
    cols = {"feature": np.repeat(feats, M)[keep], "slot": np.tile(np.arange(M), K)[keep],
            "act": act_KM.cpu().numpy().ravel()[keep], "seq": idx // S, "pos": idx % S}
    cols |= {name: t.cpu().numpy().ravel()[keep] for name, t in extra_KM.items()}
    return pd.DataFrame(cols)


# ---- text around the tokens, and a notebook view ----

def add_contexts(df: pd.DataFrame, seqs_NS: np.ndarray, tokenizer, before: int = 12, after: int = 4) -> pd.DataFrame:
    """`df` (with seq, pos columns) plus the text `left` of the token (up to `before` tokens), the `token` itself
    and the text `right` of it (up to `after` tokens), decoded piece by piece."""
    out = df.copy()
    left, token, right = [], [], []
    for s, p in zip(df["seq"].to_numpy(), df["pos"].to_numpy()):
        ids = seqs_NS[s].tolist()
        left.append(tokenizer.decode(ids[max(0, p - before):p]))
        token.append(tokenizer.decode(ids[p:p + 1]))
        right.append(tokenizer.decode(ids[p + 1:p + 1 + after]))
    out["left"], out["token"], out["right"] = left, token, right
    return out


def _show(text: str) -> str:
    # escaped, with line breaks made visible so each context stays on one row
    return html.escape(text, quote=True).replace("\n", "↵")


def render_contexts_html(df: pd.DataFrame, title: str | None = None, max_rows: int | None = 200) -> str:
    """An HTML table of contexts (from `add_contexts`): every other column as is, then the context with the
    firing token highlighted. All text is escaped. In a notebook: `IPython.display.HTML(...)`."""
    missing = {"left", "token", "right"} - set(df.columns)
    if missing:
        raise ValueError(f"columns {sorted(missing)} are missing: call add_contexts(df, seqs, tokenizer) first")
    meta = [c for c in df.columns if c not in ("left", "token", "right")]
    rows = df if max_rows is None else df.head(max_rows)

    def cell(v) -> str:
        return f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v)

    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in meta) + "<th>context</th>"
    body = []
    for d in rows.to_dict("records"):
        tds = "".join(f"<td>{html.escape(cell(d[c]))}</td>" for c in meta)
        ctx = (f'{_show(d["left"])}<mark style="background:#fd8;font-weight:bold">{_show(d["token"])}</mark>'
               f'{_show(d["right"])}')
        body.append(f'<tr>{tds}<td style="font-family:monospace;white-space:pre;text-align:left">{ctx}</td></tr>')
    caption = f"<caption>{html.escape(title)}</caption>" if title else ""
    more = f"<p>{len(df) - len(rows)} more rows not shown</p>" if len(rows) < len(df) else ""
    return (f'<table class="saelib-contexts">{caption}<thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>{more}')


def analyze_run(cfg, run_name: str, threshold: float = 0.1, k: int = 20, per_band: int = 5,
                bands: Sequence[tuple[float, float]] = DEFAULT_BANDS, before: int = 12,
                after: int = 4) -> tuple[pd.DataFrame, FeatureExamples]:
    """The high-density analysis of one trained run on the profile's held-out tokens: (dense features table,
    their examples with contexts), on the tokens the evaluation counts (BOS left out with eval.exclude_bos)."""
    from .evaluate import heldout_sequences, load_trained
    from .io import load_safetensors
    from .lm import load_lm, pick_device

    device = pick_device(cfg.train.device)
    model, tok = load_lm(cfg, device)
    sae = load_trained(cfg, run_name, device)
    seqs = heldout_sequences(cfg)
    hook, per = cfg.activations.hook, cfg.eval.batch_sequences
    exclude = tok.bos_id if cfg.eval.exclude_bos else None
    saved = cfg.eval_dir(run_name) / "features.safetensors"
    if saved.exists():
        feats = load_safetensors(saved, made_by=cfg.command("evaluate", run_name))
        s_F, max_F = feats["sparsity"], feats["max_act"]
    else:
        s_F, max_F = feature_scan(model, sae, seqs, hook, per, exclude)
    dense = dense_features(s_F, threshold)
    ex = collect_examples(model, sae, seqs, hook, dense.feature.tolist(), k=k, bands=bands, per_band=per_band,
                          max_act_F=max_F, seed=cfg.seed, batch_sequences=per, exclude_id=exclude)
    ex.top = add_contexts(ex.top, seqs, tok, before, after)
    ex.bands = add_contexts(ex.bands, seqs, tok, before, after)
    return dense, ex
