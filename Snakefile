# The DAG of one profile: text (or a synthetic model) -> tokenizer + token sequences -> LM -> SAE runs ->
# evaluation -> figures and tables.
#   snakemake --cores 2                                  # the default profile (tiny)
#   snakemake --cores 2 --config profile=smoke
#   snakemake --cores 2 --config profile=tiny 'set=runs.l0a_3.lambda_sparsity=2.5e-3'   # a variant
#   snakemake --cores 2 evaluated --config profile=smoke                            # runs only, no notebooks
# Settings come from config/<profile>.yaml only; each job's identity is the config it uses (rules/common.smk).
from snakemake.utils import validate


configfile: "config/workflow.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/pipeline.smk"
include: "workflow/rules/notebooks.smk"


rule all:
    default_target: True
    input:
        PLAN.evaluated,
        NOTEBOOK_OUTPUTS,


rule evaluated:
    input:
        PLAN.evaluated,
