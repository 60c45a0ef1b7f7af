"""The workflow's plan: which jobs make which artifacts, with which command and which settings (Snakemake
reruns a job whose settings changed). The Snakefile turns the plan into rules; tests check it directly.

A job's identity is the config it uses: `params.settings` holds the hashes of exactly the stage configs of its
outputs (SPEC stages data, lm, train, eval of a run; a notebook's own parameters), so an edit of a training key
reruns that run's group, its evaluation and the notebooks that read them, and nothing upstream; an edit of an
analysis setting reruns only the notebooks that take it.

A variant (a profile with `set` overrides) reuses every job of the profile whose settings it leaves unchanged:
those jobs appear here exactly as in the profile's own plan (same command, same outputs), and only the runs
whose settings changed get jobs of the variant, writing to `results/<profile>+<variant>/`.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from .config import ROOT, ProfileConfig, load_profile, resolve
from .nbparams import notebook_parameters

NOTEBOOK_DIR = ROOT / "paper_nbs"
FIGURES = ["fig01_sparsity_measures", "fig02_measure_derivatives", "fig03_frequency_penalty", "fig04_l0_vs_mse",
           "fig05_sparsity_distributions", "fig06_power_law", "fig07_mse_vs_step", "fig08_l0_vs_step",
           "fig09_l1_vs_step", "fig10_ablations_l0_vs_mse", "fig11_feature_matching", "fig12_high_density",
           "fig13_ground_truth", "fig14_explained_variance", "fig15_feature_recovery"]
TABLES = ["table01_summary", "table02_ablations", "table03_ground_truth"]
LM_ONLY = {"fig12_high_density"}  # it reads text around the tokens
SYNTHETIC_ONLY = {"fig13_ground_truth", "fig14_explained_variance", "fig15_feature_recovery", "table03_ground_truth"}


def notebook_names(cfg: ProfileConfig) -> list[str]:
    """The figures and tables of a profile: the post's and the ablations'; with an LM, the high-density features'
    contexts; with a synthetic model, the ground-truth figures and Table 3."""
    skip = LM_ONLY if cfg.synthetic_source else SYNTHETIC_ONLY
    return [n for n in FIGURES + TABLES if n not in skip]


@dataclass
class Job:
    """One rule of the workflow: a `python -m saelib` step over some runs."""

    name: str
    step: str
    args: list[str]
    outputs: list[str]
    inputs: list[str] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    runs: list[str] = field(default_factory=list)
    root: str = ""  # results/<profile>[+<variant>]: where its log and benchmark go
    records: dict = field(default_factory=dict)  # artifact file -> (its JSON field, the hash it must carry)

    @property
    def command(self) -> str:
        """The command, every value quoted for the shell (`--threads` and the log redirection are the rule's)."""
        return shlex.join(["python", "-m", "saelib", self.step, *self.args, "--no-progress"])

    @property
    def log(self) -> str:
        return f"{self.root}/logs/{self.name}.log"

    @property
    def stamp(self) -> str:
        return f"{self.root}/stale/{self.name}"

    def stale(self) -> bool:
        """Whether an artifact of this job on disk was made with other settings than the job's (or cannot be
        read): what each artifact records, so it holds without Snakemake's own records of past jobs."""
        for path, (key, want) in self.records.items():
            p = ROOT / path
            if p.exists():
                try:
                    if json.loads(p.read_text()).get(key) != want:
                        return True
                except (OSError, ValueError, AttributeError):
                    return True
        return False

    def add_stamp(self) -> None:
        """Make a stale job's outputs out of date for Snakemake even where its records of past jobs are missing
        (a copied or unpacked results folder, a deleted .snakemake/): every job takes a stamp file as an input
        (so the DAG's shape never depends on what is on disk), dated now when the job is stale and at the epoch
        otherwise."""
        stamp = ROOT / self.stamp
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stale = self.stale()
        if stale or not stamp.exists():
            stamp.write_text(json.dumps({"stale": stale, "settings": self.settings}) + "\n")
        if not stale:
            os.utime(stamp, (0, 0))
        self.inputs = [*self.inputs, self.stamp]

    @property
    def benchmark(self) -> str:
        return f"{self.root}/benchmarks/{self.name}.tsv"


@dataclass
class Notebook:
    name: str
    inputs: list[str]
    outputs: list[str]
    params: dict


@dataclass
class Plan:
    cfg: ProfileConfig
    jobs: list[Job]
    notebooks: list[Notebook]
    fig_dir: str

    def job(self, name: str) -> Job:
        return next(j for j in self.jobs if j.name == name)

    @property
    def evaluated(self) -> list[str]:
        """Every eval.json of the profile (the `evaluated` target)."""
        return [rel(self.cfg.eval_dir(r) / "eval.json") for r in self.cfg.run_names]


def rel(path: Path | str) -> str:
    """Paths in rules are relative to the repository root, so moving the checkout replans nothing."""
    p = Path(path)
    return os.path.relpath(p, ROOT) if p.is_absolute() else str(p)


TRAIN_FILES = ("cfg.json", "metrics.csv")  # and the weights: sae.safetensors, or a sae_lens/ folder
EVAL_FILES = ("eval.json", "features.safetensors")


def chunks(names: list[str], k: int) -> list[list[str]]:
    k = k or max(1, len(names))
    return [names[i:i + k] for i in range(0, len(names), k)]


def _jobs_of(cfg: ProfileConfig, args: list[str], prefix: str, train_runs: list[str], eval_runs: list[str],
             data: bool, lm: bool) -> list[Job]:
    """Jobs making the given stages of `cfg` (all in its own folders)."""
    jobs = []
    root = rel(cfg.out)
    if data:
        made = ("info.json",) if cfg.synthetic_source else ("info.json", "heldout.npy")
        info = rel(cfg.data_dir / "info.json")
        jobs.append(Job(f"{prefix}data", "data", args, [rel(cfg.data_dir / f) for f in made],
                        settings={"data": cfg.stage_hash("data")}, root=root,
                        records={info: ("stage_hash", cfg.stage_hash("data"))}))
    if lm and not cfg.synthetic_source:
        info = rel(cfg.lm_dir / "info.json")
        jobs.append(Job(f"{prefix}lm", "lm", args, [info], [rel(cfg.data_dir / "info.json")],
                        {"lm": cfg.stage_hash("lm")}, root=root, records={info: ("stage_hash", cfg.stage_hash("lm"))}))
    upstream = rel((cfg.data_dir if cfg.synthetic_source else cfg.lm_dir) / "info.json")
    for i, group in enumerate(chunks(train_runs, cfg.train.runs_per_process)):
        hashes = {r: cfg.stage_hash("train", r) for r in group}
        jobs.append(Job(f"{prefix}train_{i}", "train", [*args, "--run", ",".join(group), "--resume"],
                        [rel(cfg.run_dir(r) / f) for r in group for f in TRAIN_FILES], [upstream], hashes, group,
                        root, {rel(cfg.run_dir(r) / "cfg.json"): ("train_hash", hashes[r]) for r in group}))
    for i, group in enumerate(chunks(eval_runs, cfg.train.runs_per_process)):
        hashes = {r: cfg.stage_hash("eval", r) for r in group}
        jobs.append(Job(f"{prefix}evaluate_{i}", "evaluate", [*args, "--run", ",".join(group)],
                        [rel(cfg.eval_dir(r) / f) for r in group for f in EVAL_FILES],
                        [rel(cfg.run_dir(r) / f) for r in group for f in TRAIN_FILES], hashes, group, root,
                        {rel(cfg.eval_dir(r) / "eval.json"): ("eval_hash", hashes[r]) for r in group}))
    return jobs


def make_plan(profile: str, sets: list[str] | None = None, fig_dir: str = "", mark_stale: bool = False) -> Plan:
    """The jobs and notebooks that build a profile (or a variant: `sets` overrides). What it reuses from the
    profiles it is based on (the profile of a variant, the profile it `extends`) is made by their jobs. With
    `mark_stale` (the Snakefile), every job takes a stamp file as an input, dated now where the job's artifacts on
    disk were made with other settings (`Job.add_stamp`)."""
    sets = [s for s in sets or [] if s]
    cfg = load_profile(profile, sets)
    base_args = ["--profile", str(profile)]
    args = base_args + [a for s in sets for a in ("--set", s)]
    if cfg.bases:
        shared = lambda stage, r=None: not cfg.is_own(stage, r)  # noqa: E731
        own_train = [r for r in cfg.run_names if not shared("train", r)]
        own_eval = [r for r in cfg.run_names if not shared("eval", r)]
        jobs = _jobs_of(cfg, args, "variant_" if cfg.variant else "", own_train, own_eval,
                        not shared("data"), not shared("lm"))
        # the jobs of the profiles it reuses, exactly as their own plans have them, for what it reuses
        need = {rel(cfg.data_dir / "info.json"), rel(cfg.lm_dir / "info.json")}
        need |= {rel(cfg.run_dir(r) / "cfg.json") for r in cfg.run_names}
        need |= {rel(cfg.eval_dir(r) / "eval.json") for r in cfg.run_names}
        made = {o for j in jobs for o in j.outputs}
        for name in cfg.bases:
            base = load_profile(profile if name == cfg.name else name)
            arg = str(profile) if name == cfg.name else name
            prefix = "" if name == cfg.name else f"{name}_"
            own = lambda stage, c=base: [r for r in c.run_names if c.is_own(stage, r)]  # noqa: E731
            base_jobs = _jobs_of(base, ["--profile", arg], prefix, own("train"), own("eval"),
                                 base.is_own("data"), base.is_own("lm"))
            for j in base_jobs:
                if need & set(j.outputs) and not made & set(j.outputs):
                    jobs.append(j)
                    made |= set(j.outputs)
    else:
        jobs = _jobs_of(cfg, args, "", cfg.run_names, cfg.run_names, True, True)
    if mark_stale:
        for j in jobs:
            j.add_stamp()
    fig = rel(resolve(fig_dir)) if fig_dir else f"figures/{cfg.label}"
    return Plan(cfg, jobs, notebooks(cfg, profile, sets, fig), fig)


def notebook_reads(cfg: ProfileConfig, name: str) -> list[str]:
    """The run artifacts a notebook reads (its inputs; Figures 1-3 are analytic and read none)."""
    from .matching import matching_pairs
    from .study import Study

    study = Study(cfg, Path("."))
    main = study.main_runs
    every_seed_main = study.with_seeds(main)
    hl, ref = study.highlight, study.reference

    def tr(runs, files):
        return [rel(cfg.run_dir(r) / ("cfg.json" if f == "sae.safetensors" else f)) for r in runs for f in files]

    def ev(runs, files=("eval.json",)):
        return [rel(cfg.eval_dir(r) / f) for r in runs for f in files]

    pairs = matching_pairs(study)
    matched = sorted({r for p in pairs.values() for r in p})
    reads = {
        "fig04_l0_vs_mse": tr(every_seed_main, ["metrics.csv"]) + ev(main),
        "fig05_sparsity_distributions": ev(main, EVAL_FILES),
        "fig06_power_law": ev([hl, ref], EVAL_FILES),
        "fig07_mse_vs_step": tr(main, ["metrics.csv"]),
        "fig08_l0_vs_step": tr(main, ["metrics.csv"]),
        "fig09_l1_vs_step": tr(main, ["metrics.csv"]),
        "fig10_ablations_l0_vs_mse": ev(cfg.run_names),
        "fig11_feature_matching": tr(matched, ["sae.safetensors", "cfg.json"]) + ev(matched, EVAL_FILES),
        "fig12_high_density": [rel(cfg.lm_dir / "info.json"), rel(cfg.data_dir / "info.json")]
        + tr([hl], ["sae.safetensors", "cfg.json"]) + ev(cfg.run_names, EVAL_FILES),
        "table01_summary": ev(every_seed_main),
        "table02_ablations": ev(cfg.run_names),
        "fig13_ground_truth": ev(cfg.run_names),
        "fig14_explained_variance": ev(cfg.run_names),
        "fig15_feature_recovery": ev(cfg.run_names, EVAL_FILES) + [rel(cfg.data_dir / "info.json")],
        "table03_ground_truth": ev(cfg.run_names),
    }
    return sorted(set(reads.get(name, [])))


def notebooks(cfg: ProfileConfig, profile: str, sets: list[str], fig: str) -> list[Notebook]:
    """Every figure and table notebook with its inputs, outputs and papermill parameters (the common ones and
    the profile's `analysis` settings the notebook declares)."""
    import dataclasses

    analysis = dataclasses.asdict(cfg.analysis)
    out = []
    for name in notebook_names(cfg):
        declared = notebook_parameters(NOTEBOOK_DIR / f"{name}.ipynb")
        params = {"profile": str(profile), "fig_dir": fig, "overrides": ",".join(sets)}
        params |= {k: v for k, v in analysis.items() if k in declared}
        unknown = [k for k in params if k not in declared]
        if unknown:
            raise ValueError(f"{NOTEBOOK_DIR / name}.ipynb has no parameter(s) {unknown}; its parameters: {declared}")
        exts = ("png", "pdf", "ipynb") if name in FIGURES else ("csv", "md", "ipynb")
        out.append(Notebook(name, notebook_reads(cfg, name), [f"{fig}/{name}.{e}" for e in exts], params))
    return out


def put_interpreter_on_path() -> None:
    """Put the running interpreter's folder first on PATH: the jobs' `python -m ...` then runs in the environment
    Snakemake runs in, while the commands Snakemake records name no venv or checkout path."""
    import sys

    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")


def papermill_args(params: dict) -> str:
    """`-p name value ...` for papermill's command line, every value quoted for the shell."""
    return " ".join(f"-p {shlex.quote(k)} {shlex.quote(str(v))}" for k, v in params.items())
