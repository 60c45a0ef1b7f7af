# The paper's figures and Table 1: papermill runs every notebook of paper_nbs/ on one profile's results.
# Included from the Snakefile, which defines PROFILE, SET, CFG, OUT and RUNS.
#   figures/<profile>/<name>.png, .pdf   the figure      figures/<profile>/<name>.ipynb   the executed notebook
#   figures/<profile>/table01_summary.csv, .md           Table 1 (the post's runs, mean ± spread over seeds)
#   figures/<profile>/table02_ablations.csv, .md         Table 2 (every loss family, mean ± spread over seeds)
# Each notebook's inputs are the run artifacts it reads, so a changed notebook or evaluation reruns only the
# notebooks concerned, and never a training run.
import os
import sys

from saelib.results import RELEASED_RUN, check_parameters, matching_pairs, open_study, papermill_args

FIG = config.get("fig_dir") or f"figures/{PROFILE}"
HIGHLIGHT = CFG.highlight_run or RUNS[0]
REFERENCE = CFG.reference_run
# What every notebook is given (papermill -p); the names are checked against each notebook's
# `parameters` cell below, because papermill itself only warns about a name the notebook lacks.
NB_PARAMS = {"profile": PROFILE, "results_dir": OUT, "fig_dir": FIG, "overrides": ",".join(SET)}
RUN_FILE = f"{OUT}/runs/{{run}}/{{file}}"
STUDY = open_study(PROFILE, OUT, FIG, ",".join(SET))
MAIN = STUDY.with_seeds(STUDY.main_runs)  # the post's runs (L0approx + P_freq grid, reference), every seed
# Figure 11 compares decoders: the SAEs of both sides of each pair, and A's sparsities (to leave out dead features)
MATCHED = sorted({r for pair in matching_pairs(STUDY).values() for r in pair})
MATCHED_A = sorted({a for a, _ in matching_pairs(STUDY).values()})
# Figure 12 runs the LM on held-out tokens and encodes them with the highlighted run's SAE
LM_AND_DATA = [f"{OUT}/lm/info.json", f"{OUT}/data/info.json", f"{OUT}/data/heldout.npy"]

# notebook -> run artifacts it reads (Figures 1-3 are analytic: they read only the profile's config)
FIGURES = {
    "fig01_sparsity_measures": [],
    "fig02_measure_derivatives": [],
    "fig03_frequency_penalty": [],
    "fig04_l0_vs_mse": expand(RUN_FILE, run=MAIN, file="metrics.csv")
    + expand(RUN_FILE, run=STUDY.main_runs, file="eval.json"),
    "fig05_sparsity_distributions": expand(RUN_FILE, run=STUDY.main_runs, file="features.safetensors"),
    "fig06_power_law": expand(RUN_FILE, run=[HIGHLIGHT, REFERENCE], file=["features.safetensors", "eval.json"]),
    "fig07_mse_vs_step": expand(RUN_FILE, run=STUDY.main_runs, file="metrics.csv"),
    "fig08_l0_vs_step": expand(RUN_FILE, run=STUDY.main_runs, file="metrics.csv"),
    "fig09_l1_vs_step": expand(RUN_FILE, run=STUDY.main_runs, file="metrics.csv"),
    "fig10_ablations_l0_vs_mse": expand(RUN_FILE, run=RUNS, file="eval.json"),
    "fig11_feature_matching": expand(RUN_FILE, run=MATCHED, file=["sae.safetensors", "cfg.json"])
    + expand(RUN_FILE, run=MATCHED_A, file="features.safetensors"),
    "fig12_high_density": LM_AND_DATA
    + expand(RUN_FILE, run=[HIGHLIGHT], file=["sae.safetensors", "cfg.json"])
    + expand(RUN_FILE, run=RUNS, file="features.safetensors"),
}
# The released reference's row (paper): `python -m saelib evaluate-released --profile paper` writes its
# eval.json (it needs the hub, so no rule here); Table 1 reads it, and reruns on it, when it is there.
RELEASED = [f for f in [f"{OUT}/runs/{RELEASED_RUN}/eval.json"] if os.path.exists(f)]
TABLES = {
    "table01_summary": expand(RUN_FILE, run=MAIN, file="eval.json") + RELEASED,
    "table02_ablations": expand(RUN_FILE, run=RUNS, file="eval.json"),
}
# minutes of wall time per notebook job (default 20); Figure 12 runs the LM over the held-out tokens
RUNTIME = {"fig11_feature_matching": 30, "fig12_high_density": 60 if CFG.lm.source == "pretrained" else 20}
MEM_MB = {"fig11_feature_matching": 6000, "fig12_high_density": 8000}

for _name in [*FIGURES, *TABLES]:  # fail before anything runs (also on `snakemake -n`)
    check_parameters(f"paper_nbs/{_name}.ipynb", NB_PARAMS)

NOTEBOOK_OUTPUTS = [f"{FIG}/{n}.{ext}" for n in FIGURES for ext in ("png", "pdf", "ipynb")] + [
    f"{FIG}/{n}.{ext}" for n in TABLES for ext in ("csv", "md", "ipynb")
]

# papermill writes the executed notebook as it goes: write it beside the target, rename when it is complete.
PAPERMILL = (
    f"{sys.executable} -m papermill --no-progress-bar --log-output {{input.nb}} {{output.nb}}.part.ipynb "
    "{params.papermill} > {log} 2>&1 && mv {output.nb}.part.ipynb {output.nb} "
    "|| {{ rm -f {output.nb}.part.ipynb; exit 1; }}"
)


rule figure:
    input:
        nb="paper_nbs/{name}.ipynb",
        profile=f"config/{PROFILE}.yaml",
        runs=lambda w: FIGURES[w.name],
    output:
        png=f"{FIG}/{{name}}.png",
        pdf=f"{FIG}/{{name}}.pdf",
        nb=f"{FIG}/{{name}}.ipynb",
    wildcard_constraints:
        name="|".join(FIGURES),
    params:
        papermill=lambda w: papermill_args(f"paper_nbs/{w.name}.ipynb", NB_PARAMS),
    log:
        f"{OUT}/logs/notebook_{{name}}.log",
    benchmark:
        f"{OUT}/benchmarks/notebook_{{name}}.tsv"
    threads: 1
    resources:
        gpu=lambda w: GPU if w.name == "fig12_high_density" else 0,
        mem_mb=lambda w: MEM_MB.get(w.name, 2000),
        runtime=lambda w: RUNTIME.get(w.name, 20),
    shell:
        PAPERMILL


rule table:
    input:
        nb="paper_nbs/{name}.ipynb",
        profile=f"config/{PROFILE}.yaml",
        runs=lambda w: TABLES[w.name],
    output:
        csv=f"{FIG}/{{name}}.csv",
        md=f"{FIG}/{{name}}.md",
        nb=f"{FIG}/{{name}}.ipynb",
    wildcard_constraints:
        name="|".join(TABLES),
    params:
        papermill=lambda w: papermill_args(f"paper_nbs/{w.name}.ipynb", NB_PARAMS),
    log:
        f"{OUT}/logs/notebook_{{name}}.log",
    benchmark:
        f"{OUT}/benchmarks/notebook_{{name}}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        PAPERMILL
