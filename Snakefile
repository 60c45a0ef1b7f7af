# The DAG of one profile: text -> tokenizer + token sequences -> LM -> SAE runs -> evaluation -> figures.
#   snakemake --cores 1                          # the default profile (tiny)
#   snakemake --cores 1 --config profile=smoke
# The figure and table notebooks (papermill) are in workflow/notebooks.smk.
# Each step is a `python -m saelib` command; settings come from config/<profile>.yaml only.
import sys

from snakemake.utils import validate

from saelib.config import load_profile

configfile: "config/workflow.yaml"
validate(config, "workflow/schema.yaml")

PROFILE = config["profile"]
SET = [s for s in config.get("set", "").split(",") if s]
CFG = load_profile(PROFILE, SET)  # validates the profile before anything runs
OUT = CFG.out_dir
RUNS = CFG.run_names
SET_ARGS = " ".join(f"--set {s}" for s in SET)
SAELIB = f"{sys.executable} -m saelib {{cmd}} --profile {PROFILE} {SET_ARGS} --no-progress"
GPU = 1 if CFG.lm.source == "pretrained" else 0


def saelib(cmd):
    return SAELIB.format(cmd=cmd)


include: "workflow/notebooks.smk"


rule all:
    default_target: True
    input:
        expand(f"{OUT}/runs/{{run}}/eval.json", run=RUNS),
        NOTEBOOK_OUTPUTS,


# Every run trained and evaluated, no notebooks: `snakemake --cores 2 evaluated --config profile=...`
rule evaluated:
    input:
        expand(f"{OUT}/runs/{{run}}/eval.json", run=RUNS),


rule data:
    output:
        info=f"{OUT}/data/info.json",
        heldout=f"{OUT}/data/heldout.npy",
    log:
        f"{OUT}/logs/data.log",
    benchmark:
        f"{OUT}/benchmarks/data.tsv"
    shell:
        saelib("data") + " > {log} 2>&1"


rule lm:
    input:
        rules.data.output.info,
    output:
        f"{OUT}/lm/info.json",
    log:
        f"{OUT}/logs/lm.log",
    benchmark:
        f"{OUT}/benchmarks/lm.tsv"
    threads: 2
    resources:
        gpu=GPU,
        mem_mb=8000,
    shell:
        saelib("lm") + " > {log} 2>&1"


# Training and evaluation run in groups (train.runs_per_process; tiny and smoke: every run in one group):
# one process per group computes each batch of activations once for all of its SAEs.
for _i, _group in enumerate(CFG.run_groups):

    rule:
        name:
            f"train_{_i}"
        input:
            rules.lm.output,
        output:
            expand(f"{OUT}/runs/{{run}}/{{file}}", run=_group, file=["sae.safetensors", "cfg.json", "metrics.csv"]),
        log:
            f"{OUT}/logs/train_{_i}.log",
        benchmark:
            f"{OUT}/benchmarks/train_{_i}.tsv"
        threads: 2
        resources:
            gpu=GPU,
            mem_mb=(16000 if GPU else 8000),
            runtime=(720 if GPU else 60) * len(_group),
        params:
            runs=",".join(_group),
        # --resume: a pre-empted job continues from the group's last checkpoint when rerun
        shell:
            saelib("train") + " --run {params.runs} --resume > {log} 2>&1"

    rule:
        name:
            f"evaluate_{_i}"
        input:
            expand(f"{OUT}/runs/{{run}}/{{file}}", run=_group, file=["sae.safetensors", "metrics.csv"]),
        output:
            expand(f"{OUT}/runs/{{run}}/{{file}}", run=_group, file=["eval.json", "features.safetensors"]),
        log:
            f"{OUT}/logs/evaluate_{_i}.log",
        benchmark:
            f"{OUT}/benchmarks/evaluate_{_i}.tsv"
        threads: 2
        resources:
            gpu=GPU,
            mem_mb=8000,
        params:
            runs=",".join(_group),
        shell:
            saelib("evaluate") + " --run {params.runs} > {log} 2>&1"
