import math

import pytest

from saelib.config import ROOT, ConfigError, RunConfig, load_profile, sci


@pytest.mark.parametrize("profile", ["paper", "tiny", "smoke"])
def test_profiles_load(profile):
    cfg = load_profile(profile)
    assert cfg.reference_run in cfg.runs
    assert len([r for r in cfg.run_names if cfg.run(r).sparsity == "l0approx"]) >= 5
    assert cfg.activations.hook == "blocks.1.hook_resid_pre"


def test_paper_profile_matches_the_post():
    cfg = load_profile("paper")
    new_saes = [r for r in cfg.run_names if cfg.run(r).sparsity == "l0approx" and cfg.run(r).lambda_min > 0]
    lams = sorted(cfg.run(r).lambda_sparsity for r in new_saes)
    assert lams == [3e-5, 4e-5, 5e-5, 7e-5, 9e-5]
    assert cfg.seeds == [0]  # one seed on the GPU profile (configurable)
    new = cfg.run("l0a_5e-5")
    assert (new.eps, new.s_min, new.lambda_min, new.pre_encoder_bias) == (0.2, 1e-5, 1e-6, False)
    ref = cfg.run("ref_l1")
    assert (ref.sparsity, ref.lambda_sparsity, ref.pre_encoder_bias, ref.ghost) == ("l1", 8e-5, True, True)
    assert cfg.train.batch_tokens == 4096 and cfg.train.lr == 4e-4
    assert cfg.run("l0a_5e-5").expansion * 768 == 24576
    # SPEC: n = ceil(10 / (s_min * tokens_per_step))
    assert new.window(4096) == math.ceil(10 / (1e-5 * 4096)) == 245


def test_overrides_apply_and_parse_types():
    cfg = load_profile("smoke", ["train.tokens=3e4", "runs.l0a_1.lambda_sparsity=3e-5", "train.device=cpu"])
    assert cfg.train.tokens == 30000  # `3e4` is a string to YAML 1.1: still an integer
    assert cfg.run("l0a_1").lambda_sparsity == 3e-5


@pytest.mark.parametrize("override, match", [
    ("train.tokenz=5", "unknown key `train.tokenz`; valid keys under `train`: tokens"),
    ("nonsense=1", "unknown key `nonsense`"),
    ("run_defaults.s_min=1.5", "run_defaults.s_min`: must satisfy 0 < s_min < 1"),
    ("run_defaults.s_min=0", "s_min"),
    ("run_defaults.eps=0", "eps`: must be > 0"),
    ("runs.l0a_1.lambda_sparsity=-1", "runs.l0a_1.lambda_sparsity`: must be >= 0"),
    ("run_defaults.expansion=0", "expansion`: must be > 0"),
    ("run_defaults.sparsity=l2", "valid values: l0approx, l1 or tanh"),
    ("train.tokens=abc", "train.tokens`: expected an integer"),
    ("train.batch_tokens=0", "batch_tokens"),
    ("lm.d_model=130", "lm.d_model`: must be divisible"),
    ("activations.hook=resid", "blocks"),
    ("reference_run=nope", "one of the runs"),
    ("run_defaults.ghost=maybe", "true or false"),
    ("run_defaults.ghost=1", "true or false"),
    ("runs.l0a_1.lambda_min=nan", "finite"),
    ("train.tokens=true", "integer"),
    ("train", "key=value"),
    ("runs.l0a_1.label=x", "labels are derived from the values"),
    ("activations.buffer_tokens=256", "buffer_tokens.*must be >= train.batch_tokens"),
    ("activations.context=100000", "activations.context`: must be <= 4096"),
    ("train.device=gpu", "cuda:N"),
    ("runs.x/y.expansion=2", "names may hold only"),
    ("variant=../../tmp/escaped", "variant`: must start with a letter or digit"),
    ("variant=x;touch PWNED", "variant`: must start"),
    ("variant=my label", "variant`: must start"),
])
def test_bad_overrides_are_config_errors(override, match):
    with pytest.raises(ConfigError, match=match):
        load_profile("smoke", [override])


def test_unknown_profile_and_run():
    with pytest.raises(ConfigError, match="valid profiles: .*tiny"):
        load_profile("tinyy")
    cfg = load_profile("smoke")
    with pytest.raises(ConfigError, match="valid runs"):
        cfg.run("nope")


def test_labels_are_derived_from_the_values():
    cfg = load_profile("smoke", ["runs.l0a_3.lambda_sparsity=2.5e-3"])
    assert cfg.run("l0a_3").label == "λ0 = 2.5e-3" and cfg.run("l0a_3_s1").label == "λ0 = 2.5e-3"
    assert cfg.run("ref_l1").label == "L1 reference (λ1 = 1e-3)"
    assert cfg.run("l1_plain_1").label == "plain L1, λ1 = 2.5e-4"
    assert RunConfig(sparsity="l1", lambda_min=1e-6).family == "L1 + P_freq"
    assert [sci(x) for x in (2e-3, 1.2e-3, 8e-5, 0.25)] == ["2e-3", "1.2e-3", "8e-5", "2.5e-1"]


def test_cli_reports_config_error(capsys):
    from saelib.__main__ import main

    assert main(["train", "--profile", "smoke", "--set", "train.nope=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown key" in err and "Traceback" not in err


def test_seeds_expand_every_run():
    cfg = load_profile("smoke", {"seeds": [0, 3]})
    assert "l0a_1" in cfg.run_names and "l0a_1_s3" in cfg.run_names
    assert cfg.run("l0a_1_s3").seed == 3 and cfg.run("l0a_1").seed == 0
    assert cfg.base_run("l0a_1_s3") == "l0a_1"
    assert cfg.replicates("ref_l1") == ["ref_l1", "ref_l1_s3"]
    with pytest.raises(ConfigError, match="seeds"):
        load_profile("smoke", {"seeds": [1, 1]})
    with pytest.raises(ConfigError, match="seed"):
        load_profile("smoke", {"runs.l0a_1.seed": 2})


def test_a_variant_gets_its_own_folder_and_reuses_what_it_does_not_change():
    base = load_profile("smoke")
    assert base.out == ROOT / "results" / "smoke" and base.variant == ""
    v = load_profile("smoke", ["runs.l0a_3.lambda_sparsity=2.5e-3"])
    assert v.variant and v.out == ROOT / "results" / f"smoke+{v.variant}"
    assert v.data_dir == base.data_dir and v.lm_dir == base.lm_dir  # data and LM: the profile's
    assert v.run_dir("l0a_1") == base.run_dir("l0a_1")  # an unchanged run: the profile's
    assert v.run_dir("l0a_3") == v.out / "runs" / "l0a_3" and v.run_dir("l0a_3_s1").parent == v.out / "runs"
    e = load_profile("smoke", ["eval.tokens=4096"])  # evaluation only: training reused, evaluation its own
    assert e.run_dir("l0a_1") == base.run_dir("l0a_1") and e.eval_dir("l0a_1") == e.out / "runs" / "l0a_1"
    named = load_profile("smoke", ["runs.l0a_3.lambda_sparsity=2.5e-3", "variant=lam"])
    assert named.out == ROOT / "results" / "smoke+lam"
    assert load_profile("smoke", ["train.tokens=2048"]).lm_dir == base.lm_dir  # training does not touch the LM
    assert load_profile("smoke", ["tokenizer.vocab_size=600"]).data_dir != base.data_dir
    # an explicit out_dir holds everything itself (tests, hand-made folders)
    own = load_profile("smoke", ["out_dir=/tmp/x", "train.tokens=2048"])
    assert own.data_dir == own.out / "data" and own.run_dir("l0a_1") == own.out / "runs" / "l0a_1"


def test_a_profile_that_extends_another_reuses_what_it_keeps(tmp_path):
    (tmp_path / "wider.yaml").write_text("extends: smoke\nruns:\n  l0a_3: {lambda_sparsity: 2.5e-3}\n"
                                         "  ref_l1: {lambda_sparsity: 9.0e-3}\n  extra: {architecture: topk, k: 4}\n")
    base, cfg = load_profile("smoke"), load_profile(tmp_path / "wider.yaml")
    assert cfg.name == "wider" and cfg.out == ROOT / "results" / "wider" and cfg.bases == ["smoke"]
    assert list(cfg.runs)[-1] == "extra" and cfg.runs["l0a_3"].family == base.runs["l0a_3"].family
    assert cfg.runs["l0a_3"].lambda_sparsity == 2.5e-3 and cfg.runs["l0a_3"].sparsity == "l0approx"
    assert cfg.runs["ref_l1"].lambda_sparsity == 9e-3 and cfg.runs["ref_l1"].sparsity == "l1"  # merged, not replaced
    assert cfg.data_dir == base.data_dir and cfg.lm_dir == base.lm_dir
    assert cfg.run_dir("l0a_1") == base.run_dir("l0a_1") and cfg.eval_dir("l0a_1") == base.eval_dir("l0a_1")
    assert cfg.run_dir("l0a_3") == cfg.out / "runs" / "l0a_3" and cfg.run_dir("extra_s1") == cfg.out / "runs" / "extra_s1"
    # a variant of it reuses its artifacts, and through it the base's
    v = load_profile(tmp_path / "wider.yaml", ["eval.tokens=4096"])
    assert v.bases == ["wider", "smoke"] and v.run_dir("l0a_1") == base.run_dir("l0a_1")
    assert v.run_dir("extra") == cfg.run_dir("extra") and v.eval_dir("extra") == v.out / "runs" / "extra"
    assert load_profile("tiny_archs").run_dir("l0a_1") == load_profile("tiny").run_dir("l0a_1")


@pytest.mark.parametrize("text, match", [
    ("extends: nosuch\n", r"invalid value for `extends` in .*loop.yaml: unknown profile 'nosuch'"),
    ("extends: [smoke]\n", r"expected the name of a profile"),
    ("extends: loop\n", r"makes a cycle: loop -> loop"),
])
def test_bad_extends_is_a_config_error(tmp_path, monkeypatch, text, match):
    monkeypatch.setattr("saelib.config.CONFIG_DIR", tmp_path)
    (tmp_path / "loop.yaml").write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_profile(tmp_path / "loop.yaml")


def test_stage_hashes_depend_on_exactly_their_settings():
    a, b = load_profile("smoke"), load_profile("smoke", ["runs.l0a_3.lambda_sparsity=9.9e-3"])
    assert a.stage_hash("train", "l0a_1") == b.stage_hash("train", "l0a_1")
    assert a.stage_hash("train", "l0a_3") != b.stage_hash("train", "l0a_3")
    c = load_profile("smoke", ["train.checkpoint_every=7", "train.runs_per_process=2"])  # no effect on results
    assert all(a.stage_hash("train", r) == c.stage_hash("train", r) for r in a.run_names)
    d = load_profile("smoke", ["analysis.bin_width=0.1"])
    assert all(a.stage_hash("eval", r) == d.stage_hash("eval", r) for r in a.run_names)


def test_relative_paths_are_from_the_repository_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_profile("smoke").out == ROOT / "results" / "smoke"
    assert load_profile("smoke", ["out_dir=rel"]).out == ROOT / "rel"
