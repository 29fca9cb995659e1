"""The typed config schema, registered in Hydra's ConfigStore.

Hydra checks types, unknown keys and unknown group options while composing; the range and
cross-field checks live in ``__post_init__`` and run in :func:`validate`, before any work starts.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vae.errors import ConfigError

ACTIVATIONS = ("relu", "tanh", "elu", "gelu", "silu", "softplus", "leaky_relu")
BINARIZE = ("auto", "none", "static", "dynamic")
KL_FORMS = ("mc", "analytic")
VARIANCES = ("learned", "shared", "fixed", "optimal")
WARMUPS = ("none", "linear", "cyclical")
AMP_MODES = ("none", "bf16")
_DEVICE = re.compile(r"^(auto|cpu|cuda(:(0|[1-9]\d{0,3}))?)$")  # torch.device refuses cuda:01
MAX_UNITS = 1 << 16  # z_dim and each hidden layer
MAX_DRAWS = 1 << 16  # n_samples and objective.k: z draws per example in one training step
MAX_POINTS = 10_000_000  # dataset.n_samples: the moons are generated in memory
MAX_SEED = 2**32 - 1  # numpy's np.random.seed takes 0 .. 2**32 - 1
MAX_WEIGHT = 1e6  # objective.beta, objective.free_bits, likelihood.min_std: beyond it float32 overflows


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: {allowed}.")


def _seed(key: str, value: int) -> None:
    _check(0 <= value <= MAX_SEED, key, value, f"must be in [0, {MAX_SEED}]")


def _check_device(value: str) -> None:
    _check(bool(_DEVICE.match(value)), "device", value, "choose auto, cpu, cuda or cuda:N")


def _choice(key: str, value: Any, options: tuple[str, ...]) -> None:
    _check(value in options, key, value, "choose one of " + ", ".join(options))


@dataclass
class DatasetConfig:
    """Fields every data set has; the options below add their own."""

    name: str = MISSING
    val_size: int = 10000

    def __post_init__(self) -> None:
        _check(self.val_size > 0, "dataset.val_size", self.val_size, "must be a positive integer")
        _check(
            self.val_size <= MAX_POINTS, "dataset.val_size", self.val_size, f"must be at most {MAX_POINTS}"
        )


@dataclass
class MoonsConfig(DatasetConfig):
    name: str = "moons"
    n_samples: int = 10000
    noise: float = 0.1
    seed: int = 0
    val_size: int = 1000
    test_size: int = 1000

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.noise >= 0, "dataset.noise", self.noise, "must be >= 0")
        _check(
            self.n_samples <= MAX_POINTS, "dataset.n_samples", self.n_samples, f"must be at most {MAX_POINTS}"
        )
        _seed("dataset.seed", self.seed)
        _check(self.test_size > 0, "dataset.test_size", self.test_size, "must be a positive integer")
        _check(
            self.n_samples > self.val_size + self.test_size,
            "dataset.n_samples",
            self.n_samples,
            f"must exceed val_size + test_size = {self.val_size + self.test_size}",
        )


@dataclass
class ImageDatasetConfig(DatasetConfig):
    """The MNIST family: four IDX files in ``root``, fetched from the public mirrors when missing."""

    name: str = "mnist"
    root: str = "data/mnist"
    download: bool = True
    binarize: str = "auto"
    binarize_seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        _choice("dataset.binarize", self.binarize, BINARIZE)
        _seed("dataset.binarize_seed", self.binarize_seed)


@dataclass
class LikelihoodConfig:
    name: str = MISSING


@dataclass
class BernoulliConfig(LikelihoodConfig):
    name: str = "bernoulli"


@dataclass
class GaussianConfig(LikelihoodConfig):
    """Diagonal Gaussian p(x|z). variance: ``learned`` per dimension by the decoder, ``shared`` (one learned
    parameter), ``fixed`` (fixed_std) or ``optimal`` (the closed-form sigma-VAE optimum, the batch MSE).
    ``min_std`` floors the learned, shared and optimal standard deviations; 0 leaves them unbounded."""

    name: str = "gaussian"
    variance: str = "learned"
    min_std: float = 0.01
    fixed_std: float = 1.0

    def __post_init__(self) -> None:
        _choice("likelihood.variance", self.variance, VARIANCES)
        _check(
            0 <= self.min_std <= MAX_WEIGHT,
            "likelihood.min_std",
            self.min_std,
            f"must be in [0, {MAX_WEIGHT:g}] (0: no floor)",
        )
        _check(self.fixed_std > 0, "likelihood.fixed_std", self.fixed_std, "must be > 0")


@dataclass
class ContinuousBernoulliConfig(LikelihoodConfig):
    """The continuous Bernoulli: the normalised likelihood for [0, 1]-valued (grey-level) pixels."""

    name: str = "continuous_bernoulli"


@dataclass
class ObjectiveConfig:
    """The training objective. ``elbo``: beta * KL, optionally warmed up and with free bits;
    ``iwae``: the importance-weighted bound with k samples."""

    name: str = "elbo"
    beta: float = 1.0
    warmup: str = "none"
    warmup_epochs: float = 10.0
    warmup_start: float = 0.0
    warmup_ratio: float = 0.5
    free_bits: float = 0.0
    k: int = 5

    def __post_init__(self) -> None:
        _choice("objective.name", self.name, ("elbo", "iwae"))
        _check(0 <= self.beta <= MAX_WEIGHT, "objective.beta", self.beta, f"must be in [0, {MAX_WEIGHT:g}]")
        _choice("objective.warmup", self.warmup, WARMUPS)
        _check(self.warmup_epochs > 0, "objective.warmup_epochs", self.warmup_epochs, "must be > 0")
        _check(0 <= self.warmup_start <= 1, "objective.warmup_start", self.warmup_start, "must be in [0, 1]")
        _check(0 < self.warmup_ratio <= 1, "objective.warmup_ratio", self.warmup_ratio, "must be in (0, 1]")
        _check(
            0 <= self.free_bits <= MAX_WEIGHT,
            "objective.free_bits",
            self.free_bits,
            f"must be in [0, {MAX_WEIGHT:g}] nats",
        )
        _check(0 < self.k <= MAX_DRAWS, "objective.k", self.k, f"must be an integer in [1, {MAX_DRAWS}]")
        _check(
            self.warmup_epochs * self.warmup_ratio > 0,
            "objective.warmup_ratio",
            self.warmup_ratio,
            f"times objective.warmup_epochs={self.warmup_epochs} must be > 0 (it underflows to 0)",
        )
        if self.name == "iwae" and (self.beta != 1 or self.warmup != "none" or self.free_bits > 0):
            raise ConfigError(
                "objective=iwae takes no beta, warm-up or free bits (they reshape the ELBO's KL term); "
                "use objective=elbo for those."
            )


@dataclass
class EncoderConfig:
    """Bounds on the encoder's log-variance (null: unbounded), against exploding or vanishing posteriors."""

    min_log_var: float | None = None
    max_log_var: float | None = None

    def __post_init__(self) -> None:
        if self.min_log_var is not None and self.max_log_var is not None:
            _check(
                self.min_log_var < self.max_log_var,
                "encoder.min_log_var",
                self.min_log_var,
                f"must be below encoder.max_log_var={self.max_log_var}",
            )


@dataclass
class EvalConfig:
    """The final scoring: the importance-weighted log-likelihood and the latent diagnostics."""

    iw_samples: int = 5000
    batch_size: int = 1000
    max_rows: int = 4096
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.iw_samples > 0, "eval.iw_samples", self.iw_samples, "must be a positive integer")
        _check(self.batch_size > 0, "eval.batch_size", self.batch_size, "must be a positive integer")
        _check(self.max_rows > 0, "eval.max_rows", self.max_rows, "must be a positive integer")
        _seed("eval.seed", self.seed)


@dataclass
class PlotConfig:
    """Figures written at the end of training and by scripts/plot.py."""

    enabled: bool = True
    tsne_points: int = 2000
    embedding_points: int = 1000
    density_grid: int = 60
    density_samples: int = 200

    def __post_init__(self) -> None:
        for key in ("tsne_points", "embedding_points", "density_grid", "density_samples"):
            value = getattr(self, key)
            _check(value > 0, f"plot.{key}", value, "must be a positive integer")


@dataclass
class CheckpointConfig:
    """``last.pt`` every ``every`` epochs and at the end (and on SIGTERM/SIGINT); ``best.pt`` whenever the
    validation ELBO improves, if ``keep_best``."""

    every: int = 1
    keep_best: bool = True

    def __post_init__(self) -> None:
        _check(self.every > 0, "checkpoint.every", self.every, "must be a positive number of epochs")


@dataclass
class TrainConfig:
    dataset: DatasetConfig = MISSING
    likelihood: LikelihoodConfig = MISSING
    objective: ObjectiveConfig = MISSING
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    z_dim: int = 10
    hidden_dims: list[int] = field(default_factory=lambda: [400])
    activation: str = "relu"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    device: str = "auto"
    n_samples: int = 1
    kl: str = "mc"
    grad_clip: float = 0.0
    fused_adam: bool = True
    amp: str = "none"
    tf32: bool = False
    diagnose: bool = True
    progress: bool = True
    eval: EvalConfig = field(default_factory=EvalConfig)
    plot: PlotConfig = field(default_factory=PlotConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    resume: str | None = None
    resume_root: str = "outputs"

    def __post_init__(self) -> None:
        _check(0 < self.z_dim <= MAX_UNITS, "z_dim", self.z_dim, f"must be an integer in [1, {MAX_UNITS}]")
        _check(
            len(self.hidden_dims) > 0 and all(0 < h <= MAX_UNITS for h in self.hidden_dims),
            "hidden_dims",
            list(self.hidden_dims),
            f"give one or more layer sizes in [1, {MAX_UNITS}], e.g. hidden_dims=[400] or [512,256]",
        )
        _choice("activation", self.activation, ACTIVATIONS)
        _check(self.epochs > 0, "epochs", self.epochs, "must be a positive integer")
        _check(self.batch_size > 0, "batch_size", self.batch_size, "must be a positive integer")
        _check(self.lr > 0, "lr", self.lr, "must be > 0")
        _check(
            0 < self.n_samples <= MAX_DRAWS,
            "n_samples",
            self.n_samples,
            f"must be an integer in [1, {MAX_DRAWS}]",
        )
        _seed("seed", self.seed)
        _choice("kl", self.kl, KL_FORMS)
        _check(self.grad_clip >= 0, "grad_clip", self.grad_clip, "must be >= 0 (0: no clipping)")
        _choice("amp", self.amp, AMP_MODES)
        _check_device(self.device)
        if self.likelihood.name in ("bernoulli", "continuous_bernoulli") and self.dataset.name == "moons":
            raise ConfigError(
                f"likelihood={self.likelihood.name} is invalid for dataset=moons: the moons are real-valued "
                "points outside [0, 1]; use likelihood=gaussian."
            )


SPLITS = ("train", "val", "test")


@dataclass
class EvaluateConfig:
    """scripts/evaluate.py: score a run (or every run of a sweep) from its checkpoint."""

    run: str = MISSING
    split: str = "test"
    device: str = "auto"
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        _choice("split", self.split, SPLITS)
        _check_device(self.device)


@dataclass
class PlotScriptConfig:
    """scripts/plot.py: redraw a run's figures (or every run's of a sweep) from its checkpoint."""

    run: str = MISSING
    device: str = "auto"
    plot: PlotConfig = field(default_factory=PlotConfig)

    def __post_init__(self) -> None:
        _check_device(self.device)


def register_configs() -> None:
    """Store the schemas so that each option's YAML can name its schema in its defaults list."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="evaluate_schema", node=EvaluateConfig)
    cs.store(name="plot_schema", node=PlotScriptConfig)
    cs.store(group="schema/dataset", name="moons", node=MoonsConfig)
    cs.store(group="schema/dataset", name="image", node=ImageDatasetConfig)
    cs.store(group="schema/likelihood", name="bernoulli", node=BernoulliConfig)
    cs.store(group="schema/likelihood", name="gaussian", node=GaussianConfig)
    cs.store(group="schema/likelihood", name="continuous_bernoulli", node=ContinuousBernoulliConfig)
    cs.store(group="schema/objective", name="objective", node=ObjectiveConfig)


def _unknown_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """Keys of ``node`` (recursively) that its dataclass does not declare: ``+key=value`` adds them past
    Hydra's struct check, and OmegaConf.to_object would drop them silently."""
    schema = OmegaConf.get_type(node)
    if not dataclasses.is_dataclass(schema):
        return []
    fields = {f.name for f in dataclasses.fields(schema)}
    found = []
    for key in node:
        if key not in fields:
            found.append(f"{prefix}{key}")
        else:
            child = node._get_node(key)
            if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
                found += _unknown_keys(child, f"{prefix}{key}.")
    return found


def _non_finite(obj: Any, prefix: str = "") -> list[tuple[str, float]]:
    """(key, value) of every float field of a validated config that is nan or infinite."""
    found = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            found += _non_finite(value, f"{prefix}{f.name}.")
        elif isinstance(value, float) and not math.isfinite(value):
            found.append((f"{prefix}{f.name}", value))
    return found


def validate(cfg: DictConfig) -> Any:
    """Run every range and cross-field check; raise ConfigError with a one-line message."""
    unknown = _unknown_keys(cfg)
    if unknown:
        raise ConfigError(f"{unknown[0]} is not a config key: check its spelling against README.md's tables.")
    try:
        config = OmegaConf.to_object(cfg)
    except ConfigError:
        raise
    except OmegaConfBaseException as e:
        cause = e.__cause__ or e.__context__
        if isinstance(cause, ConfigError):
            raise cause from None
        raise ConfigError(str(e).splitlines()[0]) from None
    for key, value in _non_finite(config):
        _check(False, key, value, "must be a finite number")
    return config


def binarize_mode(cfg: TrainConfig) -> str:
    """The binarisation actually used: ``auto`` means dynamic for Bernoulli, none otherwise."""
    mode = getattr(cfg.dataset, "binarize", "none")
    if mode == "auto":
        return "dynamic" if cfg.likelihood.name == "bernoulli" else "none"
    return mode


_DATASETS = {"moons": MoonsConfig, "mnist": ImageDatasetConfig, "fashion_mnist": ImageDatasetConfig}
_LIKELIHOODS = {
    "bernoulli": BernoulliConfig,
    "gaussian": GaussianConfig,
    "continuous_bernoulli": ContinuousBernoulliConfig,
}


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """Rebuild a validated TrainConfig from a plain dict (a checkpoint's or config.yaml's contents)."""
    try:
        dataset = _DATASETS[values["dataset"]["name"]]
        likelihood = _LIKELIHOODS[values["likelihood"]["name"]]
    except KeyError as e:
        raise ConfigError(f"the saved config names no known dataset or likelihood ({e}).") from None
    schema = OmegaConf.structured(TrainConfig)
    schema.dataset = OmegaConf.structured(dataset)
    schema.likelihood = OmegaConf.structured(likelihood)
    try:
        merged = OmegaConf.merge(schema, values)
    except OmegaConfBaseException as e:
        raise ConfigError(
            f"the saved config does not fit this version's schema: {str(e).splitlines()[0]}"
        ) from None
    return validate(merged)
