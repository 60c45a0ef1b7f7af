# The paper's figures and Table 1: papermill runs every notebook of paper_nbs/ on one profile's results.
# Included from the Snakefile, which defines PROFILE, SET, CFG, OUT and RUNS.
#   figures/<profile>/<name>.png, .pdf   the figure      figures/<profile>/<name>.ipynb   the executed notebook
#   figures/<profile>/table01_summary.csv, .md           Table 1
# Each notebook's inputs are the run artifacts it reads, so a changed notebook or evaluation reruns only the
# notebooks concerned, and never a training run.
import sys

from saelib.results import check_parameters, papermill_args

FIG = config.get("fig_dir") or f"figures/{PROFILE}"
HIGHLIGHT = CFG.highlight_run or RUNS[0]
REFERENCE = CFG.reference_run
# What every notebook is given (papermill -p); the names are checked against each notebook's
# `parameters` cell below, because papermill itself only warns about a name the notebook lacks.
NB_PARAMS = {"profile": PROFILE, "results_dir": OUT, "fig_dir": FIG, "overrides": ",".join(SET)}
RUN_FILE = f"{OUT}/runs/{{run}}/{{file}}"

# notebook -> run artifacts it reads (Figures 1-3 are analytic: they read only the profile's config)
FIGURES = {
    "fig01_sparsity_measures": [],
    "fig02_measure_derivatives": [],
    "fig03_frequency_penalty": [],
    "fig04_l0_vs_mse": expand(RUN_FILE, run=RUNS, file=["metrics.csv", "eval.json"]),
    "fig05_sparsity_distributions": expand(RUN_FILE, run=RUNS, file="features.safetensors"),
    "fig06_power_law": expand(RUN_FILE, run=[HIGHLIGHT, REFERENCE], file=["features.safetensors", "eval.json"]),
    "fig07_mse_vs_step": expand(RUN_FILE, run=RUNS, file="metrics.csv"),
    "fig08_l0_vs_step": expand(RUN_FILE, run=RUNS, file="metrics.csv"),
    "fig09_l1_vs_step": expand(RUN_FILE, run=RUNS, file="metrics.csv"),
}
TABLES = {"table01_summary": expand(RUN_FILE, run=RUNS, file="eval.json")}

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
        mem_mb=2000,
        runtime=20,
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
