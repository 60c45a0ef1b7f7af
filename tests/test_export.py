"""Export to the sae-lens on-disk format and back: sae-lens must load our runs and compute the same thing."""

import json

import pytest
import torch
from sae_lens import SAE as SaeLensSAE
from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig
from torch.testing import assert_close

from saelib.__main__ import main
from saelib.export import REFERENCE_RELEASE, SAE_LENS_CFG, export_run, from_sae_lens, load_sae_lens
from saelib.sae import SAE
from saelib.text import HubUnreachableError

HOOK = "blocks.1.hook_resid_pre"


def make_run(folder, pre_encoder_bias: bool, d_in: int = 16, d_sae: int = 48, seed: int = 0) -> SAE:
    """A saved saelib run with non-trivial biases (zero biases would hide a b_dec applied twice or never)."""
    g = torch.Generator().manual_seed(seed)
    sae = SAE(d_in, d_sae, pre_encoder_bias, generator=g)
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(d_sae, generator=g) * 0.3)
        sae.b_dec.copy_(torch.randn(d_in, generator=g))
    sae.save(folder, {"name": folder.name, "hook": HOOK, "pre_encoder_bias": pre_encoder_bias})
    return sae


@pytest.mark.parametrize("pre_encoder_bias", [False, True])
def test_sae_lens_loads_the_export_and_computes_the_same(tmp_path, pre_encoder_bias):
    sae = make_run(tmp_path / "runs" / "r", pre_encoder_bias)
    out = export_run(tmp_path / "runs" / "r", tmp_path / "export")
    sl = SaeLensSAE.load_from_disk(str(out))
    assert isinstance(sl, StandardSAE)
    assert sl.cfg.apply_b_dec_to_input is pre_encoder_bias
    assert sl.cfg.metadata.hook_name == HOOK
    x = torch.randn(64, 16) * 2
    with torch.no_grad():
        f = sae.encode(x)
        assert (f > 0).float().mean() > 0.1  # the comparison is not all zeros
        assert_close(sl.encode(x), f)
        assert_close(sl.decode(f), sae.decode(f))
        assert_close(sl(x), sae(x).x_hat_BD)


@pytest.mark.parametrize("pre_encoder_bias", [False, True])
def test_round_trip_through_sae_lens_gives_our_sae_back(tmp_path, pre_encoder_bias):
    sae = make_run(tmp_path / "runs" / "r", pre_encoder_bias)
    back = load_sae_lens(export_run(tmp_path / "runs" / "r", tmp_path / "export"))
    assert back.shape == sae.shape
    for k, v in sae.state_dict().items():
        assert_close(back.state_dict()[k], v)


def test_export_carries_log10_sparsity_and_metadata(tmp_path):
    from safetensors.torch import load_file, save_file

    run = tmp_path / "results" / "smoke" / "runs" / "r"
    make_run(run, False)
    s_F = torch.rand(48)
    s_F[:3] = 0  # dead
    save_file({"sparsity": s_F, "max_act": torch.ones(48)}, str(run / "features.safetensors"))
    (tmp_path / "results" / "smoke" / "lm").mkdir()
    (tmp_path / "results" / "smoke" / "lm" / "info.json").write_text('{"name": "saelib-tiny"}')
    out = export_run(run, tmp_path / "export")
    assert_close(load_file(str(out / "sparsity.safetensors"))["sparsity"], torch.log10(s_F + 1e-10))
    meta = json.loads((out / SAE_LENS_CFG).read_text())["metadata"]
    assert meta["model_name"] == "saelib-tiny" and meta["saelib_run"]["name"] == "r"
    assert SaeLensSAE.load_from_disk(str(out)).cfg.metadata.model_name == "saelib-tiny"


def test_cli_round_trip_refusal_and_force(tmp_path, capsys):
    run_a, run_b, out = tmp_path / "runs" / "a", tmp_path / "runs" / "b", tmp_path / "exports" / "a"
    sae_a, sae_b = make_run(run_a, True, seed=1), make_run(run_b, False, seed=2)
    assert main(["export", str(run_a), "--format", "sae-lens", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["out"] == str(out)
    x = torch.randn(8, 16)
    with torch.no_grad():
        assert_close(SaeLensSAE.load_from_disk(str(out))(x), sae_a(x).x_hat_BD)
    # an existing non-empty folder is refused and left alone
    assert main(["export", str(run_b), "--format", "sae-lens", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert SaeLensSAE.load_from_disk(str(out)).cfg.apply_b_dec_to_input is True
    assert main(["export", str(run_b), "--format", "sae-lens", str(out), "--force"]) == 0
    with torch.no_grad():
        assert_close(SaeLensSAE.load_from_disk(str(out))(x), sae_b(x).x_hat_BD)
    assert sorted(p.name for p in out.parent.iterdir()) == ["a"]  # no temporary folders left behind
    # an empty folder is fine without --force
    (tmp_path / "empty").mkdir()
    assert main(["export", str(run_a), "--format", "sae-lens", str(tmp_path / "empty")]) == 0


def test_bad_run_folders_give_clear_errors(tmp_path, capsys):
    assert main(["export", str(tmp_path / "missing"), "--format", "sae-lens", str(tmp_path / "o")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    (tmp_path / "empty_run").mkdir()
    assert main(["export", str(tmp_path / "empty_run"), "--format", "sae-lens", str(tmp_path / "o")]) == 2
    assert "not a trained saelib run" in capsys.readouterr().err
    # an sae-lens folder is not a run folder either
    make_run(tmp_path / "runs" / "r", False)
    sl_folder = export_run(tmp_path / "runs" / "r", tmp_path / "sl")
    (sl_folder / "sae.safetensors").write_bytes((sl_folder / "sae_weights.safetensors").read_bytes())
    with pytest.raises(ValueError, match="not a saelib run config"):
        export_run(sl_folder, tmp_path / "o")
    assert not (tmp_path / "o").exists()
    with pytest.raises(FileNotFoundError, match="not an sae-lens folder"):
        load_sae_lens(tmp_path / "runs" / "r")
    with pytest.raises(SystemExit):  # argparse: only sae-lens is known
        main(["export", str(tmp_path / "runs" / "r"), "--format", "onnx", str(tmp_path / "o")])


def test_released_reference_fails_fast_without_the_hub(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-home")
    with pytest.raises(HubUnreachableError, match="gpt2-small-res-jb"):
        load_sae_lens(*REFERENCE_RELEASE)
    with pytest.raises(FileNotFoundError, match="sae_id"):
        load_sae_lens("gpt2-small-res-jb")


def test_from_sae_lens_folds_decoder_norms_and_refuses_other_architectures():
    sl = StandardSAE(StandardSAEConfig(d_in=8, d_sae=20, apply_b_dec_to_input=True))
    with torch.no_grad():
        sl.W_dec.mul_(torch.rand(20, 1) * 3 + 0.2)  # rows far from unit norm
        sl.b_enc.copy_(torch.randn(20) * 0.1)
        sl.b_dec.copy_(torch.randn(8))
    ours = from_sae_lens(sl)
    assert_close(ours.W_dec.norm(dim=1), torch.ones(20))
    x = torch.randn(32, 8)
    with torch.no_grad():
        assert_close(ours(x).x_hat_BD, sl(x))
        assert_close((ours.encode(x) > 0), (sl.encode(x) > 0))  # same features fire
    raw = from_sae_lens(sl, fold_decoder_norm=False)
    with torch.no_grad():
        assert_close(raw.encode(x), sl.encode(x))
    with pytest.raises(ValueError, match="only 'standard'"):
        from_sae_lens(TopKSAE(TopKSAEConfig(d_in=8, d_sae=20, k=4)))
    with pytest.raises(ValueError, match="normalize_activations"):
        from_sae_lens(StandardSAE(StandardSAEConfig(d_in=8, d_sae=20, normalize_activations="layer_norm")))


def test_loaded_sae_lens_sae_evaluates_like_ours(smoke_lm, tmp_path):
    """The point of load_sae_lens: the same evaluation code, same numbers, on the LM of the smoke profile."""
    from saelib.config import load_profile
    from saelib.evaluate import evaluate_sae
    from saelib.lm import load_lm

    cfg = load_profile("smoke", {"out_dir": str(smoke_lm), "eval.tokens": 1024})
    model, _ = load_lm(cfg)
    sae = make_run(tmp_path / "runs" / "r", True, d_in=cfg.lm.d_model, d_sae=64)
    back = load_sae_lens(export_run(tmp_path / "runs" / "r", tmp_path / "export"))
    ours, _, _ = evaluate_sae(model, sae, cfg, eps=0.2, progress=False)
    theirs, _, _ = evaluate_sae(model, back, cfg, eps=0.2, progress=False)
    assert ours.keys() == theirs.keys()
    for k in ours:
        assert theirs[k] == pytest.approx(ours[k], rel=1e-5, abs=1e-6), k
    assert json.loads((tmp_path / "export" / SAE_LENS_CFG).read_text())["metadata"]["saelib_run"]["hook"] == HOOK


def test_evaluate_released_writes_the_table1_row(smoke_lm, tmp_path, capsys):
    """`evaluate-released` on an sae-lens folder: eval.json and features.safetensors under runs/released_ref
    (where Table 1 looks for the released reference's row)."""
    from saelib.study import RELEASED_RUN

    out = tmp_path / "res"
    out.mkdir()
    for sub in ("data", "lm"):
        (out / sub).symlink_to(smoke_lm / sub)
    make_run(tmp_path / "runs" / "r", True, d_in=64, d_sae=64)
    export_run(tmp_path / "runs" / "r", tmp_path / "export")
    over = ["--set", f"out_dir={out}", "--set", "eval.tokens=1024"]
    assert main(["evaluate-released", "--profile", "smoke", "--source", str(tmp_path / "export"), *over,
                 "--no-progress"]) == 0
    ev = json.loads((out / "runs" / RELEASED_RUN / "eval.json").read_text())
    assert ev["run"] == RELEASED_RUN and ev["tokens"] == 1024 - 8 and 0 <= ev["dead"] <= 64  # 8 BOS left out
    assert (out / "runs" / RELEASED_RUN / "features.safetensors").exists()
    capsys.readouterr()


@pytest.mark.slow
@pytest.mark.parametrize("exclude_bos", [True, False])
def test_sae_lens_run_evals_on_an_export_matches_our_evaluation(smoke_lm, tmp_path, exclude_bos):
    """A sae-lens user's path: export a trained smoke run with its LM and held-out tokens, run sae-lens's own
    `run_evals` on it, and get our eval.json's numbers (in both BOS conventions)."""
    from saelib.config import load_profile
    from saelib.evaluate import evaluate_runs
    from saelib.export import saelens_evals
    from saelib.train import train_run

    cfg = load_profile("smoke", {"out_dir": str(smoke_lm), "train.tokens": 10 * 1024, "eval.tokens": 2048,
                                 "eval.exclude_bos": exclude_bos})
    folder = train_run(cfg, "l0a_2", progress=False)
    ours = evaluate_runs(cfg, ["l0a_2"], progress=False)["l0a_2"]
    out = export_run(folder, tmp_path / "export")
    meta = json.loads((out / SAE_LENS_CFG).read_text())["metadata"]
    assert meta["saelib_lm"]["loader"] == "saelib.export.load_exported_lm" and "not a TransformerLens" in meta["model_name"]
    theirs = saelens_evals(out, exclude_special_tokens=exclude_bos, batch_size_prompts=8)
    assert theirs["l0"] == pytest.approx(ours["l0"], rel=1e-5)
    assert theirs["mse"] == pytest.approx(ours["mse"] * cfg.lm.d_model, rel=1e-4)  # theirs sums over d_in
    assert theirs["explained_variance"] == pytest.approx(1 - ours["fvu"], rel=1e-4)
    for k_theirs, k_ours in (("ce_loss_without_sae", "ce_clean"), ("ce_loss_with_sae", "ce_sae"),
                             ("ce_loss_with_ablation", "ce_zero"), ("ce_loss_score", "ce_recovered")):
        assert theirs[k_theirs] == pytest.approx(ours[k_ours], rel=1e-4), k_theirs
