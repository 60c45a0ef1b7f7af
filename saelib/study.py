"""A profile's results as the notebooks read them: which runs there are (configurations, seeds, loss families,
the reference), where each artifact is, and loading them as pandas frames.

Every load is checked against the config the study was opened with: an artifact made from other settings
(stale), one that fails its checksum, a truncated `metrics.csv` or non-finite numbers are errors that name the
file and the step that remakes it, so no stale, mixed or broken result reaches a table or figure.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .config import MAIN_FAMILY, REFERENCE_FAMILY, ProfileConfig, config_diff, load_profile, resolve
from .io import ArtifactError, file_digest, load_safetensors, read_json
from .metrics import log10_sparsity

RELEASED_RUN = "released_ref"
"""Run folder holding `eval.json` of the released reference SAE (paper profile), shown in Table 1 if present."""


@dataclass(frozen=True)
class Study:
    """A profile's (or variant's) config and the folder figures go to."""

    cfg: ProfileConfig
    figures: Path

    @property
    def results(self) -> Path:
        return self.cfg.out

    @property
    def runs(self) -> list[str]:
        return self.cfg.run_names

    @property
    def labels(self) -> dict[str, str]:
        """Run name -> legend label (derived from the run's values, e.g. `λ0 = 2e-3`)."""
        return {r: self.cfg.run(r).label for r in self.runs}

    @property
    def reference(self) -> str:
        return self.cfg.reference_run

    @property
    def highlight(self) -> str:
        return self.cfg.highlight_run or self.runs[0]

    @property
    def configurations(self) -> list[str]:
        """Every configuration (run name of its first seed), in config order."""
        return list(self.cfg.runs)

    @property
    def main_runs(self) -> list[str]:
        """The post's runs, first seed only: the L0approx + P_freq grid and the reference (Figures 4-9)."""
        return [r for r in self.configurations if r == self.reference or self.family(r) == MAIN_FAMILY]

    def family(self, run: str) -> str:
        """The loss family of a run (`RunConfig.family`); the reference configuration is always REFERENCE_FAMILY."""
        return REFERENCE_FAMILY if self.cfg.base_run(run) == self.reference else self.cfg.run(run).family

    def other_seed(self, run: str) -> str | None:
        """The same configuration's run with the next seed (None with one seed)."""
        reps = self.cfg.replicates(self.cfg.base_run(run))
        return reps[(reps.index(run) + 1) % len(reps)] if len(reps) > 1 else None

    def with_seeds(self, runs: list[str]) -> list[str]:
        """Every seed's run of the configurations of `runs`."""
        return [r for c in dict.fromkeys(self.cfg.base_run(r) for r in runs) for r in self.cfg.replicates(c)]

    # ---- artifacts, checked ----

    def run_meta(self, run: str) -> dict:
        """The run's cfg.json, refused when it was trained with other settings than the study's config."""
        folder, made_by = self.cfg.run_dir(run), self.cfg.command("train", run)
        meta = read_json(folder / "cfg.json", made_by, keys=("train_hash", "settings", "files", "metrics_rows"))
        if meta["train_hash"] != self.cfg.stage_hash("train", run):
            diff = config_diff(meta["settings"], self.cfg.stage_config("train", run), then="then")
            raise ArtifactError(f"{folder} is stale: it was trained with other settings than {self.cfg.label}'s now "
                                f"({'; '.join(diff[:4])}); "
                                f"rebuild: {self.rebuild}")
        return meta

    def eval_of(self, run: str) -> dict:
        """The run's eval.json, refused when stale (other training or evaluation settings) or non-finite."""
        path = self.cfg.eval_dir(run) / "eval.json"
        ev = read_json(path, self.cfg.command("evaluate", run), keys=("eval_hash", "settings"))
        if ev["eval_hash"] != self.cfg.stage_hash("eval", run):
            diff = config_diff(ev["settings"], self.cfg.stage_config("eval", run), then="then")
            raise ArtifactError(f"{path} is stale: it was made with other settings than {self.cfg.label}'s now "
                                f"({'; '.join(diff[:4])}); "
                                f"rebuild: {self.rebuild}")
        bad = [k for k, v in ev.items() if isinstance(v, float) and not math.isfinite(v)]
        bad += [f"other_bos_convention.{k}" for k, v in (ev.get("other_bos_convention") or {}).items()
                if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            raise ArtifactError(f"{path}: non-finite {', '.join(bad)}; the run's SAE is broken: retrain it "
                                f"(`{self.cfg.command('train', run)}`) with a lower train.lr or lambda")
        return ev

    @property
    def rebuild(self) -> str:
        sets = ",".join(f"{k}={v}" for k, v in self.cfg._overrides.items())
        return (f"`snakemake --cores 2 --config profile={self.cfg._profile_arg}"
                + (f" 'set={sets}'" if sets else "") + "`")

    @property
    def located_cfg(self) -> ProfileConfig:
        """The study's config, for library code that finds artifacts through it (the LM, held-out tokens)."""
        return self.cfg


def open_study(profile: str = "", fig_dir: str = "", overrides: str = "", synthetic: bool = False) -> Study:
    """The notebooks' entry point. `profile`: a profile name or YAML path (empty: $SAELIB_PROFILE, else `tiny`; for
    the ground-truth notebooks, `synthetic=True`: $SAELIB_SYNTH_PROFILE, else `synth`);
    `overrides`: comma-separated `key=value` (Snakemake's `set`: a variant); `fig_dir`: where figures and tables
    go (empty: a scratch folder, `results/<profile>/scratch/`: only the workflow writes `figures/<profile>/`)."""
    default = (os.environ.get("SAELIB_SYNTH_PROFILE") or "synth") if synthetic else (
        os.environ.get("SAELIB_PROFILE") or "tiny")
    cfg = load_profile(profile or default, [s for s in overrides.split(",") if s])
    return Study(cfg, resolve(fig_dir) if fig_dir else cfg.out / "scratch")


# ---- loading ----

def _tag(df: pd.DataFrame, study: Study, run: str) -> pd.DataFrame:
    return df.assign(run=run, label=study.labels[run], reference=study.cfg.base_run(run) == study.reference,
                     config=study.cfg.base_run(run), family=study.family(run), seed=study.cfg.run(run).seed)


def load_metrics(study: Study, runs: list[str] | None = None) -> pd.DataFrame:
    """Training logs (one row per logged step) of `runs` (default all), with run, label, family, seed."""
    frames = []
    for r in runs or study.runs:
        meta = study.run_meta(r)
        path = study.cfg.run_dir(r) / "metrics.csv"
        made_by = study.cfg.command("train", r)
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing; rerun the step that makes it: `{made_by}`")
        if file_digest(path) != meta["files"]["metrics.csv"]:
            raise ArtifactError(f"{path} is truncated or changed since training (checksum); rerun `{made_by}`")
        df = pd.read_csv(io.StringIO(path.read_text()))
        if len(df) != meta["metrics_rows"] or df.isna().any().any():
            raise ArtifactError(f"{path} has {len(df)} complete rows, training logged {meta['metrics_rows']}; "
                                f"rerun `{made_by}`")
        frames.append(_tag(df, study, r))
    return pd.concat(frames, ignore_index=True)


def load_evals(study: Study, runs: list[str] | None = None) -> pd.DataFrame:
    """Held-out evaluation (`eval.json`), one row per run, indexed by run name in config order."""
    rows = []
    for r in runs or study.runs:
        ev = study.eval_of(r)
        other = {f"{k}_other_bos": v for k, v in (ev.get("other_bos_convention") or {}).items()}
        ev = {k: v for k, v in ev.items() if k not in ("settings", "provenance", "other_bos_convention")} | other
        rows.append(ev | {"run": r, "label": study.labels[r], "reference": study.cfg.base_run(r) == study.reference,
                          "config": study.cfg.base_run(r), "family": study.family(r), "seed": study.cfg.run(r).seed})
    return pd.DataFrame(rows).set_index("run")


def per_feature(study: Study, run: str) -> dict[str, np.ndarray]:
    """Everything `features.safetensors` holds for a run (checked like its eval.json): s_f, max activation, and in a
    synthetic profile which true feature each latent points at and how each true feature is covered."""
    study.eval_of(run)
    path = study.cfg.eval_dir(run) / "features.safetensors"
    return {k: v.numpy() for k, v in load_safetensors(path, made_by=study.cfg.command("evaluate", run)).items()}


def sparsity_of(study: Study, run: str) -> np.ndarray:
    """s_f of every feature of a run on the held-out tokens (checked like its eval.json)."""
    study.eval_of(run)
    path = study.cfg.eval_dir(run) / "features.safetensors"
    return load_safetensors(path, made_by=study.cfg.command("evaluate", run))["sparsity"].double().numpy()


def load_sparsities(study: Study, runs: list[str] | None = None) -> pd.DataFrame:
    """Per-feature sparsity s_f and log10(s_f) (dead features at DEAD_LOG10 = -10), one row per feature."""
    import torch

    frames = []
    for r in runs or study.runs:
        s = sparsity_of(study, r)
        log10_s = log10_sparsity(torch.from_numpy(s)).numpy()
        frames.append(_tag(pd.DataFrame({"feature": np.arange(len(s)), "s": s, "log10_s": log10_s}), study, r))
    return pd.concat(frames, ignore_index=True)


def dense_counts(study: Study, threshold: float = 0.1, runs: list[str] | None = None) -> pd.DataFrame:
    """Features with s_f > threshold, one row per run (every seed): run, config, family, label, seed, dense."""
    sp = load_sparsities(study, runs)
    return (sp.assign(dense=sp.s > threshold)
            .groupby(["run", "config", "family", "label", "seed"], sort=False, as_index=False).dense.sum())


def check_same_but_seed(study: Study, runs: list[str]) -> None:
    """Refuse to aggregate runs (one configuration's seeds) whose settings differ in anything but the seed."""
    settings = []
    for r in runs:
        s = json_copy(study.eval_of(r)["settings"])
        s["run"].pop("seed", None)
        settings.append(s)
    for r, s in zip(runs[1:], settings[1:]):
        diff = config_diff(settings[0], s, then=f"in {runs[0]}", now=f"in {r}")
        if diff:
            raise ArtifactError(f"runs {runs[0]} and {r} differ in more than the seed and cannot be averaged: "
                                + "; ".join(diff[:4]))


def json_copy(obj):
    import json

    return json.loads(json.dumps(obj))

