# The paper's figures and tables: papermill runs each notebook of paper_nbs/ on the profile's results, one job
# per notebook. Inputs are the notebook and exactly the run artifacts it reads; params are the papermill
# parameters it is given (the profile's `analysis` settings among them), so editing one reruns only the
# notebooks that take it. Outputs go to figures/<profile>[+<variant>]/ (PNG, PDF or CSV, Markdown, and the
# executed notebook, stamped with provenance); `snakemake --report` collects them with their captions.
from saelib.workflow import papermill_args, rel

NOTEBOOK_OUTPUTS = [o for nb in PLAN.notebooks for o in nb.outputs]
MEM_MB_NB = {"fig11_feature_matching": 6000, "fig12_high_density": 8000}
MINUTES_NB = {"fig11_feature_matching": 30, "fig12_high_density": 60 if GPU else 20}

for _nb in PLAN.notebooks:
    _kind = "Tables" if _nb.name.startswith("table") else "Figures"
    _main = _nb.outputs[0]

    rule:
        name:
            f"notebook_{_nb.name}"
        input:
            nb=f"paper_nbs/{_nb.name}.ipynb",
            runs=_nb.inputs,
        output:
            main=report(_main, caption=f"../report/{_nb.name}.rst", category=_kind),
            other=_nb.outputs[1:-1],
            nb=_nb.outputs[-1],
        params:
            papermill=papermill_args(_nb.params),
        log:
            f"{rel(CFG.out)}/logs/notebook_{_nb.name}.log",
        benchmark:
            f"{rel(CFG.out)}/benchmarks/notebook_{_nb.name}.tsv"
        threads: 1
        conda:
            CONDA_ENV
        resources:
            gpu=GPU if _nb.name == "fig12_high_density" else 0,
            mem_mb=MEM_MB_NB.get(_nb.name, 2000),
            runtime=MINUTES_NB.get(_nb.name, 20),
        # papermill writes the executed notebook as it goes: beside the target, renamed when it is complete
        shell:
            "OMP_NUM_THREADS={threads} python -m papermill --no-progress-bar --log-output {input.nb:q} "
            "{output.nb:q}.part.ipynb {params.papermill} > {log:q} 2>&1 "
            "&& python -m saelib.provenance {output.nb:q}.part.ipynb >> {log:q} 2>&1 "
            "&& mv {output.nb:q}.part.ipynb {output.nb:q} "
            "|| {{ rm -f {output.nb:q}.part.ipynb; exit 1; }}"
