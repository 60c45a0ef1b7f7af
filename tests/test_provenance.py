import subprocess

from saelib import provenance


def test_dirty_means_code_or_config_changed_not_outputs(tmp_path, monkeypatch):
    def git(*a):
        subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", *a], check=True,
                       capture_output=True)

    for f in ("saelib/x.py", "config/tiny.yaml", "figures/tiny/a.md", "README.md"):
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("1\n")
    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "x")
    monkeypatch.setattr(provenance, "ROOT", tmp_path)

    def state():
        provenance.git_state.cache_clear()
        return provenance.git_state()

    assert state()["dirty"] is False and len(state()["commit"]) == 40
    (tmp_path / "figures/tiny/a.md").write_text("2\n")  # an output re-made
    (tmp_path / "README.md").write_text("2\n")
    assert state()["dirty"] is False
    (tmp_path / "config/tiny.yaml").write_text("2\n")
    assert state()["dirty"] is True
    provenance.git_state.cache_clear()
