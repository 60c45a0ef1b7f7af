"""The workflow: its plan (which jobs, which settings, reuse by variants), shell safety, and the replayed cases of
issue 10 on the built smoke tree (`make test` builds it first): each edit plans exactly the jobs it should."""

import contextlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from saelib.config import ROOT
from saelib.workflow import make_plan


def snakemake(*args, cwd=ROOT, python=sys.executable, check=True):
    r = subprocess.run([python, "-m", "snakemake", "--cores", "1", *args], capture_output=True, text=True, cwd=cwd)
    if check:
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def planned(out: str) -> dict[str, int]:
    """Rule -> job count from `snakemake -n`'s job stats ({} when there is nothing to be done)."""
    if "Nothing to be done" in out:
        return {}
    stats = out.split("Job stats:")[1].split("\n\n")[0]
    rows = [re.match(r"(\S+)\s+(\d+)$", line.strip()) for line in stats.splitlines()[3:]]
    return {m.group(1): int(m.group(2)) for m in rows if m and m.group(1) != "total"}


def test_plan_of_a_profile():
    plan = make_plan("smoke")
    assert [j.name for j in plan.jobs] == ["data", "lm", "train_0", "evaluate_0"]
    train = plan.job("train_0")
    assert train.settings == {r: plan.cfg.stage_hash("train", r) for r in plan.cfg.run_names}
    assert train.command.startswith("python -m saelib train --profile smoke --run l0a_1,") and "--resume" in train.command
    nb = {n.name: n for n in plan.notebooks}
    assert nb["fig01_sparsity_measures"].inputs == []  # analytic
    assert "results/smoke/runs/l0a_3/features.safetensors" in nb["fig06_power_law"].inputs
    assert nb["fig06_power_law"].params == {"profile": "smoke", "fig_dir": "figures/smoke", "overrides": "",
                                            "bin_width": 0.2, "power_law_xmax": 0.1}


def test_a_variant_reuses_the_profiles_jobs():
    plan = make_plan("smoke", ["runs.l0a_3.lambda_sparsity=2.5e-3"])
    own = {j.name: j.runs for j in plan.jobs if j.name.startswith("variant_")}
    assert own == {"variant_train_0": ["l0a_3", "l0a_3_s1"], "variant_evaluate_0": ["l0a_3", "l0a_3_s1"]}
    base = make_plan("smoke")
    for j in plan.jobs:
        if not j.name.startswith("variant_"):  # the profile's own job, unchanged
            assert j.command == base.job(j.name).command and j.outputs == base.job(j.name).outputs
    assert plan.fig_dir == f"figures/smoke+{plan.cfg.variant}"
    assert all(o.startswith(f"results/smoke+{plan.cfg.variant}/runs/l0a_3") for o in plan.job("variant_train_0").outputs
               if "/l0a_3/" in o)


def test_a_profile_that_extends_another_runs_the_others_jobs_for_what_it_reuses():
    plan = make_plan("tiny_archs")
    tiny = make_plan("tiny")
    own = [j for j in plan.jobs if not j.name.startswith("tiny_")]
    assert [j.name for j in own] == ["train_0", "evaluate_0"]
    assert all(r.split("_")[0] in ("topk", "batchtopk", "jumprelu") for r in own[0].runs) and len(own[0].runs) == 12
    for j in plan.jobs:
        if j.name.startswith("tiny_"):  # tiny's own job, exactly as tiny's plan has it
            t = tiny.job(j.name.removeprefix("tiny_"))
            assert j.command == t.command and j.outputs == t.outputs
    assert {j.name for j in plan.jobs} == {"train_0", "evaluate_0", "tiny_data", "tiny_lm", "tiny_train_0",
                                           "tiny_evaluate_0"}
    ev = make_plan("tiny_archs", ["eval.tokens=1000"])  # evaluation only: every training job comes from a base
    assert {j.name for j in ev.jobs} == {"variant_evaluate_0", "train_0", "tiny_data", "tiny_lm", "tiny_train_0"}


@pytest.mark.slow
def test_values_are_quoted_for_the_shell(tmp_path):
    """A `set` value with shell syntax reaches the step as one argument: nothing runs but the step."""
    out = tmp_path / "out dir"
    evil = "text.path=a b;touch PWNED;true"
    plan = make_plan("smoke", [f"out_dir={out}", evil])
    assert "'text.path=a b;touch PWNED;true'" in plan.job("data").command
    target = os.path.relpath(out / "data" / "info.json", ROOT)
    snakemake(target, "--config", "profile=smoke", f"set=out_dir={out},{evil}", cwd=ROOT)
    assert (out / "data" / "info.json").exists()
    assert not (ROOT / "PWNED").exists() and not list(tmp_path.rglob("PWNED"))


def smoke_built() -> bool:
    r = snakemake("-n", "--config", "profile=smoke", check=False)
    return r.returncode == 0 and "Nothing to be done" in r.stdout


@pytest.fixture(scope="module")
def smoke_is_built():
    if not smoke_built():
        pytest.skip("needs the smoke results up to date (`make test` builds them)")


def built(test):
    """On the built smoke tree, through Snakemake subprocesses: the slow tier."""
    return pytest.mark.slow(pytest.mark.usefixtures("smoke_is_built")(test))


@contextlib.contextmanager
def edited(old: str, new: str = "", append: str = ""):
    """config/smoke.yaml edited in place for the block (as a user would), restored afterwards."""
    path = ROOT / "config" / "smoke.yaml"
    text = path.read_text()
    assert old in text
    try:
        path.write_text(text.replace(old, new) + append)
        yield
    finally:
        path.write_text(text)


@built
def test_editing_a_training_key_replans_exactly_that_group_and_what_reads_it():
    with edited("l0a_3: {lambda_sparsity: 2.0e-3}", "l0a_3: {lambda_sparsity: 9.9e-3}"):
        jobs = planned(snakemake("-n", "--config", "profile=smoke").stdout)
    assert jobs.pop("train_0") == 1 and jobs.pop("evaluate_0") == 1 and jobs.pop("all") == 1
    assert "data" not in jobs and "lm" not in jobs
    assert not {"notebook_fig01_sparsity_measures", "notebook_fig02_measure_derivatives",
                "notebook_fig03_frequency_penalty"} & set(jobs)  # analytic figures read no run
    assert {"notebook_table01_summary", "notebook_fig06_power_law"} <= set(jobs)


@built
def test_an_edit_reruns_its_group_even_without_snakemakes_records():
    """`--rerun-triggers mtime` ignores Snakemake's records of past jobs' params, as a copied or unpacked results
    folder or a deleted .snakemake/ would: the artifacts' own recorded hashes still replan the edited group."""
    with edited("l0a_3: {lambda_sparsity: 2.0e-3}", "l0a_3: {lambda_sparsity: 9.9e-3}"):
        out = snakemake("-n", "--rerun-triggers", "mtime", "--config", "profile=smoke").stdout
    jobs = planned(out)
    assert jobs.get("train_0") == 1 and "data" not in jobs and "lm" not in jobs, out[-2000:]
    assert "reason: Updated input files: results/smoke/stale/train_0" in out
    assert "Nothing to be done" in snakemake("-n", "--rerun-triggers", "mtime", "--config", "profile=smoke").stdout


def test_a_job_whose_artifacts_record_other_settings_is_stale(tmp_path):
    plan = make_plan("smoke", [f"out_dir={tmp_path}"])
    train, lm = plan.job("train_0"), plan.job("lm")
    assert not train.stale() and not lm.stale()  # nothing on disk yet
    cfg = plan.cfg
    cfg.run_dir("l0a_3").mkdir(parents=True)
    (cfg.run_dir("l0a_3") / "cfg.json").write_text('{"train_hash": "%s"}' % cfg.stage_hash("train", "l0a_3"))
    assert not train.stale()
    (cfg.run_dir("l0a_3") / "cfg.json").write_text('{"train_hash": "0123"}')
    assert train.stale()
    (cfg.run_dir("l0a_3") / "cfg.json").write_text('{"train_hash": ')  # cut short: rebuilt, not trusted
    assert train.stale()
    cfg.lm_dir.mkdir(parents=True)
    (cfg.lm_dir / "info.json").write_text('{"stage_hash": "%s"}' % cfg.stage_hash("lm"))
    marked = make_plan("smoke", [f"out_dir={tmp_path}"], mark_stale=True)
    assert all(j.inputs[-1] == j.stamp and (ROOT / j.stamp).exists() for j in marked.jobs)  # one DAG shape
    assert (ROOT / train.stamp).stat().st_mtime > 0 and (ROOT / lm.stamp).stat().st_mtime == 0
    (cfg.run_dir("l0a_3") / "cfg.json").write_text('{"train_hash": "%s"}' % cfg.stage_hash("train", "l0a_3"))
    make_plan("smoke", [f"out_dir={tmp_path}"], mark_stale=True)  # settings back as the artifact records them
    assert (ROOT / train.stamp).stat().st_mtime == 0


@built
def test_editing_an_analysis_setting_reruns_only_the_notebooks_that_take_it():
    with edited("seed: 0", "seed: 0", append="analysis:\n  bin_width: 0.25\n"):
        jobs = planned(snakemake("-n", "--config", "profile=smoke").stdout)
    assert jobs == {"notebook_fig05_sparsity_distributions": 1, "notebook_fig06_power_law": 1, "all": 1}


@built
def test_an_override_is_a_variant_that_trains_only_what_changed():
    out = snakemake("-n", "--config", "profile=smoke", "set=runs.l0a_3.lambda_sparsity=2.5e-3").stdout
    jobs = planned(out)
    assert jobs.pop("variant_train_0") == 1 and jobs.pop("variant_evaluate_0") == 1
    assert not {"data", "lm", "train_0", "evaluate_0"} & set(jobs)
    assert all(k.startswith("notebook_") or k == "all" for k in jobs)


@built
def test_another_venv_replans_nothing(tmp_path):
    """Another virtual environment (its own folder and interpreter path) with the same packages."""
    import sysconfig

    venv = tmp_path / "elsewhere"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(os.path.realpath(sys.executable))
    shutil.copy(Path(sys.prefix) / "pyvenv.cfg", venv / "pyvenv.cfg")
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    site.mkdir(parents=True)
    (site / "same_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    r = snakemake("-n", "--config", "profile=smoke", python=str(venv / "bin" / "python"))
    assert "Nothing to be done" in r.stdout


@pytest.mark.slow
def test_snakemake_dag_resolves_for_every_profile(tmp_path):
    for profile in ("smoke", "tiny", "paper"):
        r = snakemake("-n", "--config", f"profile={profile}", f"set=out_dir={tmp_path / profile}")
        assert "train_0" in r.stdout


@pytest.mark.slow
def test_snakemake_rejects_unknown_config_key():
    r = snakemake("-n", "--config", "profile=smoke", "profil=x", check=False)
    assert r.returncode != 0 and "profil" in r.stderr + r.stdout


@pytest.mark.slow
def test_snakemake_lint_is_clean():
    r = snakemake("--lint", "--config", "profile=smoke", check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]


@pytest.mark.slow
def test_a_killed_snakemake_run_recovers_on_its_own(tmp_path):
    """SIGKILL the whole Snakemake run (it and its job) while a training job runs: the lock and the incomplete
    outputs stay behind. The wrapper `make` uses unlocks (no other Snakemake runs here) and reruns the incomplete
    job; the outputs end complete."""
    import signal
    import time

    out = tmp_path / "res"
    target = os.path.relpath(out / "runs" / "l0a_1" / "eval.json", ROOT)
    config = ["--config", "profile=smoke",
              f"set=out_dir={out},train.tokens=200000,train.checkpoint_every=20,train.runs_per_process=1"]
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "1", target, *config], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not list((out / "checkpoints").glob("*/latest.json")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert any((ROOT / ".snakemake" / "locks").iterdir())
    r = subprocess.run([sys.executable, "-m", "saelib.workflow_cli", "--cores", "1", target, *config], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "unlocking" in r.stderr and (out / "runs" / "l0a_1" / "eval.json").exists()


def test_a_live_run_keeps_its_lock(tmp_path):
    from saelib.workflow_cli import other_snakemake_running

    assert other_snakemake_running() is False
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)  # snakemake"], cwd=ROOT)
    try:
        import time

        time.sleep(0.3)
        assert other_snakemake_running() is True
    finally:
        proc.kill()


@built
def test_the_report_collects_every_figure_and_table(tmp_path):
    out = tmp_path / "report.html"
    snakemake("--report", str(out), "--config", "profile=smoke")
    html = out.read_text(errors="replace")
    assert out.stat().st_size > 100_000  # self-contained: the figures are inside
    for name in ("fig06_power_law", "table02_ablations", "fig11_feature_matching"):
        assert name in html


@pytest.mark.slow
def test_a_cluster_executor_runs_the_workflow_with_the_rules_own_resources(tmp_path):
    """snakemake-executor-plugin-cluster-generic with a local submit command (each job its own background process):
    the rules declare threads, mem_mb, runtime and gpu, so no --default-resources is needed. A short part of the
    smoke DAG: data, LM, one training group of a run, its evaluation."""
    out = tmp_path / "res"
    target = os.path.relpath(out / "runs" / "l0a_1" / "eval.json", ROOT)
    cluster = ROOT / "workflow" / "cluster"
    r = snakemake(target, "--executor", "cluster-generic", "--jobs", "4",
                  "--cluster-generic-submit-cmd", str(cluster / "submit.sh"),
                  "--cluster-generic-status-cmd", str(cluster / "status.sh"),
                  "--cluster-generic-cancel-cmd", str(cluster / "cancel.sh"),
                  "--seconds-between-status-checks", "1",
                  "--config", "profile=smoke", f"set=out_dir={out},train.runs_per_process=1,train.tokens=10240")
    assert "cluster-generic" in r.stdout + r.stderr or (out / "runs" / "l0a_1" / "eval.json").exists()
    assert (out / "runs" / "l0a_1" / "eval.json").exists() and (out / "lm" / "info.json").exists()
