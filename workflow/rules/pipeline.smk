# Data, LM, training groups and evaluation groups: one rule per job of the plan (saelib.workflow).
# Training and evaluation run in groups (train.runs_per_process; tiny and smoke: every run in one group): one
# process computes each batch of activations once for all of its SAEs. `--resume` lets a pre-empted training
# job continue from its group's last checkpoint.
MEM_MB = {"data": 4000, "lm": 8000, "train": 16000 if GPU else 8000, "evaluate": 8000}
MINUTES = {"data": 30, "lm": 60, "evaluate": 120 if GPU else 30}

for _job in PLAN.jobs:

    rule:
        name:
            _job.name
        input:
            _job.inputs,
        output:
            _job.outputs,
        params:
            settings=_job.settings,
            # the command, every value shell-quoted (saelib.workflow.Job.command); rules are made in a loop, so
            # whatever differs between them lives in directives evaluated now, not in `shell:`
            command=_job.command,
        log:
            _job.log,
        benchmark:
            _job.benchmark
        threads: 2
        conda:
            CONDA_ENV
        resources:
            gpu=GPU if _job.step in ("lm", "train", "evaluate") else 0,
            mem_mb=MEM_MB[_job.step],
            runtime=(720 if GPU else 60) * max(1, len(_job.runs)) if _job.step == "train" else MINUTES[_job.step],
        shell:
            "{params.command} --threads {threads} > {log:q} 2>&1"
