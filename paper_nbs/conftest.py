"""nbval runs every notebook here on the smoke results (`make test` builds them first): the notebooks open
$SAELIB_PROFILE (default `tiny`, for someone exploring after `make figures`) and the ground-truth ones
$SAELIB_SYNTH_PROFILE (default `synth`), so these are set to `smoke` and `synth_smoke` for the kernels nbval starts;
the sanitize file is found from any working directory."""

import os
from pathlib import Path

os.environ["SAELIB_PROFILE"] = "smoke"
os.environ["SAELIB_SYNTH_PROFILE"] = "synth_smoke"  # the ground-truth notebooks


def pytest_configure(config):
    if getattr(config.option, "sanitize_with", None) is None:
        config.option.sanitize_with = str(Path(__file__).parent / "nbval_sanitize.cfg")
