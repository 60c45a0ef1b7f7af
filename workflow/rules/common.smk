# Shared by every rule: the plan of the profile (loaded once), and the interpreter.
from saelib.workflow import make_plan, put_interpreter_on_path


envvars:
    "PATH",


SETS = config.get("set") or []
SETS = [s for s in (SETS.split(",") if isinstance(SETS, str) else SETS) if s]
PLAN = make_plan(config["profile"], SETS, config.get("fig_dir", ""), mark_stale=True)  # validates the profile first
CFG = PLAN.cfg
GPU = 1 if CFG.lm.source == "pretrained" else 0
# Jobs run `python -m saelib ...`: this interpreter's folder first on PATH, so the commands (and with them
# Snakemake's record of each job) do not name a venv or a checkout path.
put_interpreter_on_path()
# every rule documents its software with the pinned environment (used with --software-deployment-method conda)
CONDA_ENV = "../../environment.yml"

