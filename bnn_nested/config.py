"""Validated run configuration (pydantic v2). Unknown keys and bad values fail with one line.

Example::

    cfg = load_config("configs/digits_mlp.yaml", overrides=["train.epochs=5"])
    cfg.model.hidden
"""

from __future__ import annotations

import copy
import difflib
import importlib
import math
import re
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bnn_nested.safeyaml import YamlError, read_text_file, safe_load
from bnn_nested.threads import MAX_THREADS, resolve_threads

# --------------------------------------------------------------------------- accepted names
# Choices the command line offers, kept here (no torch) so that ``--help`` and usage errors come
# before torch is imported; the modules that implement them import these names.

#: Conformal non-conformity scores (:mod:`bnn_nested.evaluation.conformal`).
SET_SCORES: tuple[str, ...] = ("thr", "aps", "raps")
#: The uncertainty scores bnn-nested ships and what each takes (the functions are in
#: :data:`bnn_nested.evaluation.ood.SCORES`, where user modules add theirs); the command line checks
#: these names before it imports torch when no user module can be imported (no ``--allow-import``).
BUILTIN_SCORES: dict[str, str] = {
    "msp": "probs",
    "max_logit": "logits",
    "energy": "logits",
    "entropy": "probs",
    "mutual_information": "samples",
    "expected_entropy": "samples",
}
#: The out-of-distribution scores ``evaluate`` reports by default (every score, built in or
#: registered by a user module, is in :data:`bnn_nested.evaluation.ood.SCORES`).
DEFAULT_OOD_SCORES: tuple[str, ...] = ("entropy", "mutual_information", "msp")
#: How a width is realised when timing it (:mod:`bnn_nested.deploy.profile`).
LATENCY_MODES: tuple[str, ...] = ("sliced", "masked", "exported", "onnxruntime")


def check_choice(field: str, value: Any, accepted: tuple[str, ...]) -> None:
    """Refuse ``value`` outside ``accepted`` with one line naming ``field`` and the choices."""
    if value not in accepted:
        raise ValueError(f"{field} must be one of {', '.join(accepted)}; got {_short(value, 60)}")


def accepted_scores(kinds: dict[str, str], probabilities: bool = False) -> list[str]:
    """The score names of ``kinds`` (name -> what the score takes, as :data:`BUILTIN_SCORES`), in
    order; with ``probabilities`` only the scores of probabilities (not of logits), which
    selective prediction and the cascade can rank by."""
    return [n for n, t in kinds.items() if not probabilities or t != "logits"]


def unknown_scores(
    names, kinds: dict[str, str], field: str, probabilities: bool, hint: str
) -> str | None:
    """The one-line error for the names in ``names`` that :func:`accepted_scores` does not list
    (``None`` when every name is accepted); ``hint`` ends it, in parentheses. Torch-free: the
    command line checks built-in names with it before importing torch, the score registry checks
    registered ones (:func:`bnn_nested.evaluation.ood.check_scores`)."""
    accepted = accepted_scores(kinds, probabilities)
    unknown = [n for n in names if n not in accepted]
    if not unknown:
        return None
    what = "score of probabilities" if probabilities else "OOD score"
    return (
        f"{field}: unknown {what} {', '.join(map(repr, unknown))[:120]}; accepted: "
        f"{', '.join(accepted)} ({hint})"
    )


# --------------------------------------------------------------------------- regularization

RegularizationKind = Literal["wrs", "fixnorm", "weight_decay", "invariant", "none"]

FIELDS_OF_KIND: dict[str, frozenset[str]] = {
    "wrs": frozenset(
        {"granularity", "target", "every", "other_weight_decay", "include", "exclude"}
    ),
    "fixnorm": frozenset(
        {
            "granularity",
            "classifier_norm",
            "classifier_granularity",
            "classifier",
            "other_weight_decay",
            "include",
            "exclude",
        }
    ),
    "weight_decay": frozenset({"weight_decay", "mode", "exclude_bias_and_norm", "exclude"}),
    "invariant": frozenset({"coefficient", "variant", "blocks", "include", "exclude"}),
    "none": frozenset(),
}


class RegularizationConfig(BaseModel):
    """Norm-control method and its options (docs/METHODS.md#norm-control); see the module table."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    kind: RegularizationKind = Field(
        "wrs", description="wrs | fixnorm | weight_decay | invariant | none"
    )
    # wrs / fixnorm
    granularity: Literal["filter", "layer"] = Field(
        "filter", description="norm per output filter or per whole weight tensor (wrs, fixnorm)"
    )
    target: Literal["unit", "initial"] = Field(
        "unit", description="wrs: rescale to norm 1 or to the norms recorded at setup"
    )
    every: int = Field(1, ge=1, description="wrs: rescale after steps that are multiples of this")
    other_weight_decay: float = Field(
        5e-4,
        ge=0,
        description="wrs/fixnorm: coupled decay of weights not followed by normalization",
    )
    classifier_norm: float = Field(1.0, gt=0, description="fixnorm: fixed classifier norm")
    classifier_granularity: Literal["per_class", "matrix"] = Field(
        "per_class", description="fixnorm: norm of each class row or of the whole matrix"
    )
    classifier: str | None = Field(
        None, description="fixnorm: classifier module name (default: last nn.Linear)"
    )
    # weight_decay
    weight_decay: float = Field(5e-4, ge=0, description="weight_decay: coefficient wd")
    mode: Literal["coupled", "decoupled"] = Field(
        "coupled", description="weight_decay: L2 gradient (SGD) or AdamW-style decoupled"
    )
    exclude_bias_and_norm: bool = Field(
        True, description="weight_decay: skip biases and normalization affine parameters"
    )
    # invariant
    coefficient: float = Field(1e-4, ge=0, description="invariant: penalty coefficient")
    variant: Literal["chain", "residual"] = Field(
        "chain", description="invariant: chain of layers or product over residual blocks"
    )
    blocks: list[list[str]] | None = Field(
        None, description="invariant/residual: module names per block (default: model hook)"
    )
    # shared
    include: list[str] = Field(
        default_factory=list, description="fnmatch patterns of module names to add / select"
    )
    exclude: list[str] = Field(
        default_factory=list, description="fnmatch patterns of module names to leave alone"
    )

    @model_validator(mode="after")
    def _only_fields_of_kind(self) -> RegularizationConfig:
        fields = type(self).model_fields
        stray = sorted(
            f
            for f in self.model_fields_set - FIELDS_OF_KIND[self.kind] - {"kind"}
            if getattr(self, f) != fields[f].get_default(call_default_factory=True)
        )
        if stray:
            raise ValueError(f"fields {stray} do not apply to kind={self.kind!r}")
        if self.blocks is not None and any(len(b) == 0 for b in self.blocks):
            raise ValueError("blocks: every block needs at least one module name")
        return self


class ConfigError(ValueError):
    """A configuration problem, with a one-line message naming the key and the accepted values."""


#: Upper bounds checked at validation, so a typo fails with the field named instead of an
#: allocator error or a machine brought to a halt (e.g. ``batch_size: 1e21``).
MAX_BATCH = 1 << 20
MAX_WORKERS = 256
MAX_UNITS = 1 << 16
MAX_SAMPLES = 10_000
MAX_BINS = 10_000
#: Longest value echoed back in an error message.
MAX_ECHO = 200


def _short(value: Any, limit: int = MAX_ECHO) -> str:
    """``repr(value)`` cut to ``limit`` characters (error messages stay one short line)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


#: Initial ``log alpha`` of Gaussian weights (``q(w) = N(theta, alpha theta^2)``): nearly point
#: weights at the start. The one source of this default (models, layers and the config read it).
DEFAULT_INIT_LOG_ALPHA = -8.0
#: A dotted module path (``my_pkg.models``), not a file path.
MODULE_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"
#: Width samplers bnn-nested ships (:mod:`bnn_nested.training.samplers`); others come from modules
#: named in the config's ``imports``.
BUILTIN_SAMPLERS: tuple[str, ...] = ("vou", "nested_dropout", "sandwich", "fixed")
#: Data sets bnn-nested ships; others come from modules named in the config's ``imports``.
BUILTIN_DATA: tuple[str, ...] = (
    "digits",
    "mnist5k",
    "mnist",
    "fashion_mnist",
    "cifar10",
    "cifar100",
    "svhn",
    "imagefolder",
)


class DataConfig(_Strict):
    """Which data set and how to split and batch it."""

    name: str = Field(
        "digits",
        description=f"{' | '.join(BUILTIN_DATA)}, or a name registered by a module in 'imports'",
    )
    root: str | None = Field(None, description="local folder for torchvision data sets")
    augment: bool = Field(
        False, description="torchvision sets: random crop (padding 4) and horizontal flip"
    )
    image_size: int | None = Field(
        None, ge=8, le=1024, description="torchvision sets: resize images to this side"
    )
    val_fraction: float = Field(0.15, ge=0.0, lt=0.5, description="0: no validation split")
    test_fraction: float = Field(0.2, gt=0.0, lt=0.5, description="digits / mnist5k only")
    batch_size: int = Field(64, ge=1, le=MAX_BATCH)
    eval_batch_size: int = Field(512, ge=1, le=MAX_BATCH)
    num_workers: int = Field(0, ge=0, le=MAX_WORKERS)
    held_out_classes: list[int] = Field(
        default_factory=list, description="classes removed from training, used as OOD ('heldout')"
    )

    @pydantic.model_serializer(mode="wrap")
    def _drop_unused_fractions(self, handler):
        """A data set registered by the user splits itself: the default ``val_fraction`` /
        ``test_fraction`` would misdescribe its run, so they are stored only when given."""
        out = handler(self)
        if self.name not in BUILTIN_DATA:
            for key in ("val_fraction", "test_fraction"):
                if key not in self.model_fields_set:
                    out.pop(key, None)
        return out


#: Old model keys -> their names now (``frozen`` read as "not trained" to PyTorch users;
#: ``weights`` read like the layers' ``weight`` tensor).
RENAMED_MODEL_KEYS = {"frozen": "kept", "weights": "weight_posterior"}


class ModelConfig(_Strict):
    """Architecture. ``groups`` must divide every ordered layer's width."""

    name: str = "mlp"
    hidden: list[int] = Field(default_factory=lambda: [256, 256], min_length=1)
    groups: int = Field(16, ge=1, le=MAX_UNITS)
    kept: int = Field(2, ge=0, description="leading groups of every ordered layer always kept")
    weight_posterior: Literal["point", "gaussian"] = Field(
        "point", description="point weights, or a Gaussian posterior per weight (Bayesian layers)"
    )
    norm: Literal["none", "batch"] = "none"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    variant: str | None = None
    order_first: bool = False
    order_classifier_input: bool = True
    init_log_alpha: float = Field(DEFAULT_INIT_LOG_ALPHA, ge=-12.0, le=0.0)
    weight_noise: Literal["lrt", "shared"] = Field(
        "lrt",
        description="Gaussian weights' training estimator: lrt (local reparameterisation, two "
        "convolutions per layer) or shared (one weight draw per mini-batch, one convolution)",
    )
    weight_prior: Literal["log_uniform", "gaussian"] = Field(
        "log_uniform",
        description="prior of Gaussian weights: log_uniform (sparse VD's improper prior, the seed "
        "paper's; ill-posed) or gaussian (N(0, s^2) per layer, s^2 by empirical Bayes)",
    )
    arch: str | None = Field(None, description="name: torchvision: the architecture, e.g. resnet18")
    target: str | None = Field(
        None, description="name: import: 'package.module:factory' (runs that code)"
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="keyword arguments of the torchvision / import / vit builder",
    )
    exclude: list[str] = Field(
        default_factory=list, description="nestified models: module names whose outputs stay whole"
    )
    order_heads: bool = Field(True, description="nestified models: order attention heads")
    init_from: str | None = Field(
        None, description="plain network state dict to start from (weights-only), see --init-from"
    )
    order: Literal["none", "importance"] = Field(
        "none", description="importance: permute channels, most important first (from init_from)"
    )
    importance: Literal["l1", "bn_gamma", "taylor"] = "l1"
    moped_delta: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="MOPED: Gaussian weights with std delta * |w| (log_alpha = 2 ln delta)",
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, data: Any) -> Any:
        """Old spellings still load (saved runs, old configs), with a warning naming the new key."""
        if isinstance(data, dict):
            for old, new in RENAMED_MODEL_KEYS.items():
                if old in data:
                    if new in data:
                        raise ValueError(f"model.{old} is the old name of model.{new}; give one")
                    warnings.warn(f"model.{old} is deprecated: use model.{new}", FutureWarning, 3)
                    data = {**data, new: data[old]}
                    del data[old]
        return data

    @field_validator("hidden")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(h < 1 or h > MAX_UNITS for h in v):
            raise ValueError(f"hidden sizes must be in [1, {MAX_UNITS}]")
        return v

    @model_validator(mode="after")
    def _groups_fit(self) -> ModelConfig:
        if self.kept >= self.groups:
            raise ValueError(f"kept must be < groups ({self.groups}), got {self.kept}")
        if self.name == "torchvision" and not self.arch:
            raise ValueError("arch: name 'torchvision' needs an architecture, e.g. arch: resnet18")
        if self.name == "import":
            if not self.target or ":" not in self.target or "/" in self.target:
                raise ValueError(
                    "target: name 'import' needs 'package.module:factory' (a module path, not a "
                    f"file path), got {self.target!r}"
                )
        if self.arch is not None and self.name != "torchvision":
            raise ValueError(f"arch: only for name 'torchvision', not {self.name!r}")
        if self.target is not None and self.name != "import":
            raise ValueError(f"target: only for name 'import', not {self.name!r}")
        if self.name == "mlp":
            bad = [h for h in self.hidden if h % self.groups]
            if bad:
                raise ValueError(f"groups ({self.groups}) must divide every hidden size, not {bad}")
        return self


class OrderingConfig(_Strict):
    """Width sampler (training strategy) and ordering prior / posterior."""

    sampler: str = Field(
        "vou",
        description=f"{' | '.join(BUILTIN_SAMPLERS)}, or a name registered by a module in "
        "'imports' (bnn_nested.training.register_sampler)",
    )
    temperature: float = Field(1.0, gt=0.0)
    schedule: Literal["constant", "exponential"] = "constant"
    temperature_min: float = Field(0.5, gt=0.0)
    anneal_rate: float = Field(0.05, ge=0.0, description="per epoch, exponential schedule")
    prior: Literal["geometric", "uniform"] = "geometric"
    prior_pi: float = Field(0.95, gt=0.0, lt=1.0)
    init: Annotated[float, Field(ge=-5.0, le=5.0)] | Literal["prior", "importance"] = 3.0
    hard: bool = True  # straight-through masks: measured better (docs/RESULTS.md); false: the paper
    per_example: bool = False
    kl_weight: float = Field(1.0, ge=0.0)
    lr: float | None = Field(
        None, gt=0.0, description="learning rate of ordering parameters (None: train.lr)"
    )
    kl_warmup_epochs: int = Field(0, ge=0)
    fixed_width: float = Field(1.0, gt=0.0, le=1.0, description="sampler 'fixed'")
    min_width: float = Field(0.25, gt=0.0, le=1.0, description="sampler 'sandwich'")
    sandwich_random: int = Field(2, ge=0)
    distill: bool = True
    vou_distill: bool = Field(
        False,
        description="sampler 'vou': also run the unmasked full width each step and train the "
        "masked pass on its (detached) predictive distribution (in-place distillation)",
    )
    gradient: Literal["straight_through", "score", "coordinate"] = Field(
        "straight_through",
        description="sampler 'vou', hard masks: how the ordering learns: the gradient of the "
        "expected loss in the ordering logits, straight_through (through the relaxed Downhill "
        "sample, biased) or score (score function, leave-one-out baseline over two masked passes "
        "per step, unbiased); or coordinate (no gradient: after each epoch q(b) is set to its "
        "closed-form optimum from the data term measured at every truncation; passes drawn from "
        "1/2 q + 1/2 uniform)",
    )
    coordinate_examples: int = Field(
        1024,
        ge=1,
        description="gradient 'coordinate': training examples on which the data term of every "
        "truncation is measured after each epoch (a random subset fixed by the seed)",
    )
    weight_kl: Literal["keep", "all"] = Field(
        "keep",
        description="sampler 'vou': weight each channel's weight KL by its keep probability "
        "(q(W|b) = prior for dropped channels, the seed paper) or count every channel (q(W) "
        "independent of b)",
    )

    @model_validator(mode="after")
    def _score_gradient(self) -> OrderingConfig:
        if self.gradient != "straight_through" and not (
            self.sampler == "vou" and self.hard and not self.per_example and not self.vou_distill
        ):
            raise ValueError(
                f"gradient: {self.gradient!r} needs sampler 'vou' with hard: true, per_example: "
                "false and vou_distill: false"
            )
        return self

    @model_validator(mode="after")
    def _schedule_range(self) -> OrderingConfig:
        if self.schedule == "exponential" and self.temperature_min > self.temperature:
            raise ValueError(
                f"temperature_min ({self.temperature_min}) must be <= temperature "
                f"({self.temperature}) for the exponential schedule"
            )
        return self


class TrainConfig(_Strict):
    epochs: int = Field(30, ge=1)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    scheduler: Literal["none", "cosine"] = "none"
    grad_clip: float | None = Field(None, gt=0.0)
    log_alpha_lr: float | None = Field(
        None, gt=0.0, description="learning rate of Gaussian weights' log_alpha (None: lr)"
    )
    log_alpha_update: Literal["gradient", "newton"] = Field(
        "gradient",
        description="how Gaussian weights' log_alpha learn: by the optimiser (gradient), or by a "
        "damped fixed-point update of each weight's posterior precision toward its stationary "
        "value (newton: variational online Newton; needs model.weight_prior: gaussian)",
    )
    newton_rate: float = Field(
        0.025,
        gt=0.0,
        le=1.0,
        description="log_alpha_update 'newton': damping per step (times the scheduler's learning-"
        "rate factor, so it decays with train.scheduler: cosine)",
    )
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    threads: int | str = Field(
        "auto", description="CPU threads for torch: auto or 1..1024 (bnn_nested.threads)"
    )
    checkpoint_every: int = Field(0, ge=0, description="epochs between checkpoints (0: end only)")
    checkpoint_every_steps: int = Field(
        0, ge=0, description="optimisation steps between checkpoints (0: none)"
    )
    teacher: str | None = Field(
        None,
        description="in-place distillation to every sampled width from 'original' (the network "
        "of model.init_from) or a plain state-dict path",
    )
    distill_weight: float = Field(1.0, ge=0.0)
    distill_temperature: float = Field(2.0, gt=0.0)
    distill_loss: Literal["kl", "soft_ce"] = "kl"
    log: Literal["none", "tensorboard"] = Field(
        "none", description="tensorboard: event files under RUN/tensorboard/ (the extra)"
    )

    @field_validator("threads", mode="before")
    @classmethod
    def _threads(cls, v: Any) -> int | str:
        try:
            resolve_threads(v)
        except ValueError:
            raise ValueError(f"expected 'auto' or an integer in [1, {MAX_THREADS}]") from None
        return v if v == "auto" else int(v)

    @model_validator(mode="after")
    def _precision_fits_device(self) -> TrainConfig:
        if self.precision == "fp16" and self.device == "cpu":
            raise ValueError("precision 'fp16' needs device 'cuda' or 'auto'; use 'bf16' on CPU")
        return self


class EvalConfig(_Strict):
    widths: list[float] = Field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0], min_length=1)
    samples: int = Field(1, ge=1, le=MAX_SAMPLES)
    ece_bins: int = Field(15, ge=1, le=MAX_BINS)

    @field_validator("widths")
    @classmethod
    def _in_range(cls, v: list[float]) -> list[float]:
        for w in v:
            if not 0.0 < w <= 1.0:
                raise ValueError(f"every width must be in (0, 1], got {w}")
        return sorted(set(v))


class Config(_Strict):
    """A whole run."""

    seed: int = Field(0, ge=0, lt=2**32)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    ordering: OrderingConfig = Field(default_factory=OrderingConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    regularization: RegularizationConfig = Field(default_factory=RegularizationConfig)
    imports: list[Annotated[str, Field(pattern=MODULE_PATTERN)]] = Field(
        default_factory=list,
        max_length=32,
        description="modules imported before building (they register models / data sets with "
        "register_model / register_dataset); importing runs their code: trusted configs only",
    )

    @model_validator(mode="after")
    def _names_known(self) -> Config:
        if self.data.name not in BUILTIN_DATA and not self.imports:
            raise ValueError(
                f"data.name: unknown data set {self.data.name[:80]!r}; accepted: "
                f"{', '.join(BUILTIN_DATA)} (or list the module that registers it in 'imports')"
            )
        if self.ordering.sampler not in BUILTIN_SAMPLERS and not self.imports:
            raise ValueError(
                f"ordering.sampler: unknown width sampler {self.ordering.sampler[:80]!r}; "
                f"accepted: {', '.join(BUILTIN_SAMPLERS)} (or list the module that registers it "
                "in 'imports')"
            )
        return self

    @model_validator(mode="after")
    def _newton_variances(self) -> Config:
        if self.train.log_alpha_update == "newton" and not (
            self.model.weight_posterior == "gaussian" and self.model.weight_prior == "gaussian"
        ):
            raise ValueError(
                "train.log_alpha_update: 'newton' needs model.weight_posterior: gaussian and "
                "model.weight_prior: gaussian (its fixed point is the Gaussian prior's)"
            )
        if self.train.log_alpha_update == "newton" and self.train.precision == "fp16":
            raise ValueError(
                "train.log_alpha_update: 'newton' reads unscaled gradients; use precision fp32 "
                "or bf16"
            )
        return self

    @model_validator(mode="after")
    def _from_trained(self) -> Config:
        if self.train.teacher == "original" and not self.model.init_from:
            raise ValueError(
                "train.teacher: 'original' distils from the network of model.init_from "
                "(--init-from PATH); set it, or name a state-dict path"
            )
        if (self.model.order == "importance" or self.ordering.init == "importance") and not (
            self.model.init_from
        ):
            raise ValueError(
                "model.order / ordering.init 'importance' need trained weights: set "
                "model.init_from (--init-from PATH)"
            )
        if self.ordering.init == "importance" and self.model.order != "importance":
            raise ValueError("ordering.init: 'importance' needs model.order: importance")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain, re-validatable dict of the resolved config (what runs store)."""
        return self.model_dump(mode="json")


def import_modules(cfg: Config) -> None:
    """Import the modules of ``cfg.imports`` (so their ``register_model`` / ``register_dataset``
    calls run). A missing module is a one-line ``ConfigError``."""
    for name in cfg.imports:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise ConfigError(f"imports: cannot import {name!r} ({str(err)[:150]})") from None


def import_trusted(cfg: Config, allow_import: bool, where: str, error: type[Exception]) -> None:
    """Import what a config read from a shared file names, only if its reader trusts the file.

    Two config fields import (and so run) code: ``model.name: import`` (its ``model.target``) and
    the top-level ``imports``. Without ``allow_import`` either is refused with one line
    ``error(f"{where}: ...")``; otherwise the ``imports`` are imported (their registrations must
    exist before the model is built). The one check both safe loaders use."""
    if not allow_import:
        if cfg.model.name == "import":
            raise error(
                f"{where}: its config imports {cfg.model.target!r} (model.name: import runs that "
                "code); pass allow_import=True only for files you trust"
            )
        if cfg.imports:
            raise error(
                f"{where}: its config imports {cfg.imports[:3]!r} (imports run code); pass "
                "allow_import=True only for files you trust"
            )
    import_modules(cfg)


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """Field names of the (sub-)model at location ``loc`` (for "did you mean" hints)."""
    model: Any = Config
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            break
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            break
    return list(getattr(model, "model_fields", {}))


def format_validation_error(err: ValidationError) -> str:
    """First error of ``err`` as one line: ``model.hiden: unknown key (did you mean 'hidden'?)``."""
    e = err.errors()[0]
    loc = tuple(p for p in e["loc"] if not str(p).startswith("function-"))
    where = ".".join(str(p) for p in loc) or "config"
    if e["type"] == "extra_forbidden":
        known = _fields_at(loc[:-1])
        hint = difflib.get_close_matches(str(loc[-1]), known, n=1)
        tip = f"did you mean '{hint[0]}'?" if hint else f"known keys: {', '.join(known)}"
        return f"{where}: unknown key ({tip})"
    msg = e["msg"].removeprefix("Value error, ")[:300]
    got = e.get("input")
    shown = "" if isinstance(got, dict) else f" (got {_short(got)})"
    more = f" [+{len(err.errors()) - 1} more]" if len(err.errors()) > 1 else ""
    if not loc and re.match(r"^[a-z_]+(\.[a-z_]+)+: ", msg):  # a whole-config check names its field
        return f"{msg}{more}"
    return f"{where}: {msg}{shown}{more}"


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.epochs=5"`` -> (``["train", "epochs"]``, 5); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {_short(text)}: expected KEY=VALUE, e.g. train.epochs=5")
    key, value = text.split("=", 1)
    try:
        parsed = safe_load(value)
    except YamlError as err:
        raise ConfigError(f"override {_short(text)}: {err}") from None
    return key.strip().split("."), parsed


def _refuse_non_finite(node: Any, where: str = "") -> None:
    """One-line :class:`ConfigError` at the first NaN / Inf anywhere in ``node`` (also inside
    free-form sections such as ``model.kwargs``, which pydantic does not look into)."""
    if isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"{where or 'config'}: must be a finite number (got {node})")
    if isinstance(node, dict):
        for k, v in node.items():
            _refuse_non_finite(v, f"{where}.{k}" if where else str(k))
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            _refuse_non_finite(v, f"{where}.{i}")


def build_config(raw: dict[str, Any] | None, overrides: list[str] | None = None) -> Config:
    """Validate a raw dict (plus ``key.sub=value`` overrides) into a :class:`Config`."""
    raw = copy.deepcopy(dict(raw or {}))  # never modify the caller's dicts
    for text in overrides or []:
        keys, value = parse_override(text)
        if len(keys) == 2 and keys[0] == "model" and keys[1] in RENAMED_MODEL_KEYS:
            old, keys = keys[1], ["model", RENAMED_MODEL_KEYS[keys[1]]]
            warnings.warn(f"model.{old} is deprecated: use model.{keys[1]}", FutureWarning, 2)
        node = raw
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {_short(text)}: {_short(k, 60)} is not a section")
        node[keys[-1]] = value
    _refuse_non_finite(raw)
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML file into a validated :class:`Config`."""
    path = Path(path)
    try:
        raw = safe_load(read_text_file(path, "config file"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except YamlError as err:
        msg = str(err)
        raise ConfigError(
            msg if msg.startswith("config file") else f"config file {path}: {msg}"
        ) from None
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return build_config(raw, overrides)
