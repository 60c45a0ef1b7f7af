import math

import pytest

from saelib.config import ConfigError, RunConfig, load_profile


@pytest.mark.parametrize("profile", ["paper", "tiny", "smoke"])
def test_profiles_load(profile):
    cfg = load_profile(profile)
    assert cfg.reference_run in cfg.run_names
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
    cfg = load_profile("smoke", ["train.tokens=2048", "runs.l0a_1.lambda_sparsity=3e-5", "train.device=cpu"])
    assert cfg.train.tokens == 2048
    assert cfg.run("l0a_1").lambda_sparsity == 3e-5  # `3e-5` is a string to YAML 1.1: still accepted as float


@pytest.mark.parametrize("override, match", [
    ("train.tokenz=5", "unknown key.*train.tokenz.*valid keys.*tokens"),
    ("nonsense=1", "unknown key.*nonsense"),
    ("run_defaults.s_min=1.5", "s_min.*0 < s_min < 1"),
    ("run_defaults.s_min=0", "s_min"),
    ("run_defaults.eps=0", "eps.*> 0"),
    ("runs.l0a_1.lambda_sparsity=-1", "lambda_sparsity.*>= 0"),
    ("run_defaults.expansion=0", "expansion.*> 0"),
    ("run_defaults.sparsity=l2", "valid values: l0approx, l1, tanh"),
    ("train.tokens=abc", "expected an integer"),
    ("train.batch_tokens=0", "batch_tokens"),
    ("lm.d_model=130", "divisible"),
    ("activations.hook=resid", "blocks"),
    ("reference_run=nope", "one of the runs"),
    ("run_defaults.ghost=maybe", "true or false"),
    ("runs.l0a_1.lambda_min=nan", "finite"),
    ("train", "key=value"),
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


def test_run_label_default():
    assert "l1" in RunConfig(sparsity="l1").label


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
