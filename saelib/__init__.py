"""saelib: sparse autoencoders trained with an L0-approximating penalty and a rolling-frequency penalty,
compared with L1-trained SAEs. See SPEC names in the docstrings; `python -m saelib --help` for the CLI."""

from .config import ConfigError, ProfileConfig, RunConfig, load_profile
from .sae import SAE

__all__ = ["ConfigError", "ProfileConfig", "RunConfig", "SAE", "load_profile"]
__version__ = "0.1.0"
