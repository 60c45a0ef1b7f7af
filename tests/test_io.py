"""saelib.io and the loaders built on it: every damaged artifact is refused with a message naming the file, what is
wrong and the command that makes it again. The damage is real (bytes cut or changed on disk), not patched."""

import json

import numpy as np
import pytest
import torch

from saelib.config import ConfigError, TextConfig
from saelib.io import (
    ArtifactError,
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    file_digest,
    load_npy,
    load_safetensors,
    read_json,
    save_npy,
    save_safetensors,
)
from saelib.text import openwebtext_documents

MADE_BY = "python -m saelib data --profile smoke"


def cut(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_json_truncated_changed_or_incomplete(tmp_path):
    p = tmp_path / "info.json"
    atomic_write_json(p, {"tokens": 5, "files": {}})
    assert read_json(p, MADE_BY, keys=("tokens",)) == {"tokens": 5, "files": {}}
    p.write_text(p.read_text().replace('"tokens": 5', '"tokens": 6'))
    with pytest.raises(ArtifactError, match=rf"{p} fails its checksum.*rerun the step that makes it: `{MADE_BY}`"):
        read_json(p, MADE_BY)
    atomic_write_json(p, {"tokens": 5})
    cut(p)
    with pytest.raises(ArtifactError, match=rf"{p} is truncated or corrupt \(not valid JSON"):
        read_json(p, MADE_BY)
    atomic_write_json(p, {"other": 1})
    with pytest.raises(ArtifactError, match=rf"{p} lacks tokens"):
        read_json(p, MADE_BY, keys=("tokens",))
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path / 'none.json'} is missing; rerun"):
        read_json(tmp_path / "none.json", MADE_BY)


@pytest.mark.parametrize("damage", ["truncated", "header", "empty", "flipped"])
def test_npy_damage_is_named(tmp_path, damage):
    p = tmp_path / "heldout.npy"
    save_npy(p, np.arange(4096, dtype=np.int32).reshape(64, 64))
    sha = file_digest(p)
    data = p.read_bytes()
    if damage == "truncated":
        p.write_bytes(data[:-100])
    elif damage == "header":
        p.write_bytes(data[:10] + b"{'descr': garbage" + data[27:])
    elif damage == "empty":
        p.write_bytes(b"")
    else:  # one byte of the payload changed: only the checksum can tell
        p.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
        with pytest.raises(ArtifactError, match=rf"{p} fails its checksum"):
            load_npy(p, MADE_BY, sha)
        assert load_npy(p, MADE_BY)[-1, -1] != 4095  # unverified it would load
        return
    with pytest.raises(ArtifactError, match=rf"{p} is truncated or corrupt \(not a readable .npy array.*`{MADE_BY}`"):
        load_npy(p, MADE_BY)


def test_pickled_npy_is_refused(tmp_path):
    p = tmp_path / "x.npy"
    np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ArtifactError, match="not a readable .npy array"):
        load_npy(p)


def test_safetensors_truncated_or_changed(tmp_path):
    p = tmp_path / "sae.safetensors"
    save_safetensors({"W": torch.ones(8, 4)}, p)
    assert load_safetensors(p, {"W": ((8, 4), torch.float32)})["W"].sum() == 32
    with pytest.raises(ArtifactError, match=r"tensor `W` is \(8, 4\) torch.float32, expected \(4, 8\)"):
        load_safetensors(p, {"W": ((4, 8), torch.float32)})
    data = p.read_bytes()
    p.write_bytes(data[:-1] + bytes([data[-1] ^ 0x40]))
    with pytest.raises(ArtifactError, match=rf"{p} fails its checksum"):
        load_safetensors(p, made_by=MADE_BY)
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match=rf"{p} is truncated or corrupt.*rerun the step that makes it"):
        load_safetensors(p, made_by=MADE_BY)


def test_damaged_data_artifacts_name_the_data_step(smoke_lm):
    """The smoke profile's real data folder, copied and damaged: tokenizer.json and heldout.npy."""
    from saelib.config import load_profile
    from saelib.data import load_tokenizer, load_tokens

    cfg = load_profile("smoke", [f"out_dir={smoke_lm}"])
    tok = cfg.data_dir / "tokenizer.json"
    original = tok.read_bytes()
    try:
        cut(tok, 0.9)
        with pytest.raises(ArtifactError, match=r"tokenizer.json fails its checksum.*python -m saelib data"):
            load_tokenizer(cfg)
    finally:
        tok.write_bytes(original)
    held = cfg.data_dir / "heldout.npy"
    original = held.read_bytes()
    try:
        cut(held, 0.7)
        with pytest.raises(ArtifactError, match=r"heldout.npy fails its checksum.*python -m saelib data --profile smoke"):
            load_tokens(cfg, "heldout")
    finally:
        held.write_bytes(original)
    assert load_tokens(cfg, "heldout").shape[1] == cfg.activations.context


def test_non_utf8_and_bad_jsonl_text_are_named(tmp_path):
    (tmp_path / "a.txt").write_text("plain text\n", encoding="utf-8")
    (tmp_path / "b.txt").write_bytes("caf\xe9 latin-1\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"b.txt is not UTF-8 text \(invalid continuation byte at byte 3\): convert"):
        list(openwebtext_documents(TextConfig(path=str(tmp_path))))
    (tmp_path / "b.txt").unlink()
    (tmp_path / "c.jsonl").write_text(json.dumps({"text": "ok"}) + "\n{\"txt\": 1}\n")
    with pytest.raises(ConfigError, match=r"c.jsonl, line 2: not a JSON object with a `text` field"):
        list(openwebtext_documents(TextConfig(path=str(tmp_path))))


def test_atomic_write_leaves_the_old_file_when_it_fails(tmp_path):
    p = tmp_path / "x.txt"
    atomic_write_text(p, "old")

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with atomic_path(p) as tmp:
            tmp.write_text("half")
            raise Boom
    assert p.read_text() == "old" and sorted(x.name for x in tmp_path.iterdir()) == ["x.txt"]
