"""Experiment configuration: frozen dataclasses per section, YAML files and `section.key=value` overrides.

Unknown sections or keys, values of the wrong type and values outside a key's `Literal` choices are
`ConfigError`s that name the key and list the valid ones, so a typo never silently falls back to a default.
Rules that join several keys (a mode that needs a method, shards that need k-center, ...) live in
ray_al.loop.rules, which also checks the names registries hold (SSL methods, backbones, strategies).
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A bad config file, key or value; the message says which and what is valid."""


class BudgetError(ValueError):
    """The labelling plan (al.initial_size, al.budget, al.rounds) does not fit in the pool."""


# The keys that take one of a fixed set of values: checked when the config loads (`_coerce`).
OnCorrupt = Literal["skip", "error"]  # skip (report ids, leave them out) | error
# SSL with CE every round | SSL once, then rounds | a given encoder (checkpoint or model.weights), a head per
# round | supervised training from model.weights
Mode = Literal["joint", "pretrain", "frozen", "finetune"]
Optimizer = Literal["sgd", "adam"]
LrSchedule = Literal["step", "cosine"]  # 10x drops at milestones | anneal to 0 over the epochs
Resident = Literal["auto", "always", "never"]  # one worker group for every round: auto = pools that fit in memory
EmbedDtype = Literal["float32", "bfloat16"]
Committee = Literal["mc_dropout", "heads"]  # MC-dropout passes in the embed step | bagged linear heads at selection
Features = Literal["model", "pretrained"]  # the round's model | the self-supervised encoder's, once per run
Scaling = Literal["standardize", "unit", "none"]  # typiclust's and probcover's geometry (acquisition.geometry)
Oracle = Literal["simulated", "file"]
KeepEmbeddings = Literal["all", "last"]
InitialMethod = Literal["random", "typiclust", "probcover", "kcenter", "auto"]  # all but random: on SSL features


def choices(literal: Any) -> tuple[str, ...]:
    """The values a `Literal` key takes: choices(Mode) == ("joint", "pretrain", "frozen")."""
    return typing.get_args(literal)


@dataclass(frozen=True)
class DataConfig:
    """Where the pool and the test split come from."""

    dataset: str = "digits"  # digits | cifar10 | parquet | folder
    pool: str = ""  # pool URI (parquet file/dir or image folder; local or s3://); cifar10: train.parquet or a folder
    test: str = ""  # test split URI; empty: digits/cifar10 use their own test split
    pool_size: int = 0  # 0 = whole pool; otherwise a seeded subsample (CPU-sized runs)
    test_size: int = 0  # 0 = whole test split
    subsample_seed: int = -1  # seed of the pool/test subsamples; -1 = al.seed (>= 0: one pool for every seed)
    # 0 = the weights' input size (model.weights), else the dataset's own (digits 8, cifar10 32), else the
    # median shorter side of the pool's first images, at most 224; images are resized on the shorter side
    # and centre-cropped, never squashed
    image_size: int = 0
    channels: int = 0  # 0 = 3 for pretrained weights, else the dataset's own (digits 1, cifar10 3)
    mean: tuple[float, ...] = ()  # normalisation of [0, 1] pixels; () = the weights' own, else the pool's
    std: tuple[float, ...] = ()
    num_classes: int = 0  # 0 = infer from the labels
    on_corrupt: OnCorrupt = "skip"
    s3_endpoint: str = ""  # e.g. http://127.0.0.1:9000 for MinIO / moto; empty = AWS
    s3_region: str = ""
    classes: tuple[str, ...] = ()  # class names annotators use (an unlabeled pool); () = from the data
    embeddings: str = ""  # a user's own embeddings (Parquet: id, embedding[, probs]): selection-only rounds


@dataclass(frozen=True)
class ModelConfig:
    # small_cnn | lenet | resnet18 | vgg16_bn | wrn28_2 | efficientnet_lite0 | torchvision:<name> | timm:<name>
    # | package.module:callable (ray_al.models.pretrained)
    backbone: str = "small_cnn"
    weights: str = "none"  # none | imagenet | a path or s3:// URI of a state dict or of a ray_al model.pt
    dropout: float = 0.0  # before the classifier; > 0 enables MC-dropout committees


@dataclass(frozen=True)
class TrainConfig:
    method: str = "none"  # SSL method: none | moby | barlow_twins | simsiam | mocov2 | simclr | rotnet
    mode: Mode = "joint"
    epochs: int = 15
    batch_size: int = 64
    unlabeled_batch_size: int = 64  # SSL batch over labeled + unlabeled images (joint mode)
    optimizer: Optimizer = "sgd"
    lr: float = 0.05
    lr_schedule: LrSchedule = "step"
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 5e-4
    milestones: tuple[float, ...] = (0.6, 0.8)  # fractions of the epochs where lr drops 10x
    ssl_weight: float = 1.0  # lambda_c: weight of the SSL loss in the joint objective
    ssl_options: dict = field(default_factory=dict)  # method-specific (temperature, queue_size, ...)
    pretrain_epochs: int = 10  # pretrain mode: SSL epochs over the whole pool, once per run
    pretrain_lr: float = 0.0  # pretrain mode: lr of the SSL pre-training (0 = train.lr)
    finetune: bool = False  # pretrain mode: train the encoder too (else a linear head on frozen features)
    checkpoint: str = ""  # frozen mode: a checkpoint of a pre-trained encoder (or model.weights)
    num_workers: int = 1  # Ray Train workers (DDP when > 1)
    use_gpu: bool = False
    cpus_per_worker: int = 1
    max_failures: int = 2  # Ray Train FailureConfig: worker losses survived per round
    checkpoint_every_s: float = 10.0  # epoch checkpoints at most this often (0 = every epoch); the last always
    sync_bn: bool = True  # SyncBatchNorm when num_workers > 1
    seed_offset: int = 0
    unlabeled_per_round: int = 0  # joint SSL on a seeded sample of about this many unlabeled images a round (0 = all)
    resident: Resident = "auto"


@dataclass(frozen=True)
class EmbedConfig:
    batch_size: int = 256
    actors: int = 1  # actor pool size; it starts whole when the CPUs allow (workers.embed.pool_bounds)
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0
    dtype: EmbedDtype = "float32"  # inference
    normalize: bool = False  # unit-length embeddings: k-center, BADGE and Weibull then measure cosine distances
    # a frozen encoder's pool + test features, shared by runs with the same encoder and pool (keyed by both;
    # a sweep's trials use SWEEP_DIR/features_cache); "" = the run's own RUN_DIR/frozen_features
    features_cache: str = ""


@dataclass(frozen=True)
class SelectConfig:
    # typiclust, then margin once a probe is confident (docs/RESULTS.md, "`select.method=auto` becomes the
    # embedded default"); the switch: auto_switch_per_class below
    method: str = "auto"
    shards: int = 1  # plain k-center's shards (method=kcenter); > 1 runs Ray actors
    prefilter: str = ""  # e.g. entropy: k-center over the prefilter_factor * k most uncertain
    prefilter_factor: int = 10  # must equal ray_al.acquisition.PREFILTER_FACTOR (one default; a test checks)
    committee: Committee = "mc_dropout"  # of the committee methods
    committee_size: int = 5  # members, >= 2
    zero_shot: bool = False  # one k-center ordering of the whole pool (round 0 features); rounds take prefixes
    fallback: str = "typiclust"  # run when the method cannot yet (weibull before 3 labels in a class); recorded
    # method=auto: 0 = margin once a probe's mean top-class probability over the pool reaches 0.8, typiclust
    # before (docs/auto_rule.md: pretrained and from-scratch features); N > 0 = the fixed rule of commit
    # 059c831, typiclust below N labels per class
    auto_switch_per_class: float = 0.0
    features: Features = "model"  # what selection measures distances on
    # typiclust / probcover (auto's typiclust too): each dimension to unit variance, then each row to length 1;
    # unit = rows to length 1 only; none = the raw features (docs/RESULTS.md, "Selection geometry")
    scaling: Scaling = "standardize"


@dataclass(frozen=True)
class ALConfig:
    rounds: int = 5  # selection rounds after the initial set
    initial_size: int = 50
    budget: int = 50  # labels queried per round
    budgets: tuple[int, ...] = ()  # per-round batch sizes instead (round r queries budgets[r]); len = al.rounds
    seed: int = 0
    oracle: Oracle = "simulated"
    initial: InitialMethod = "random"  # how the seed set is chosen


@dataclass(frozen=True)
class RunConfig:
    dir: str = "runs/default"  # run directory, local or s3://
    overwrite: bool = False  # start over in an existing run directory
    ray_num_cpus: int = 0  # local Ray only: 0 = all cores
    # all: every round's embeddings stay in RUN_DIR/rounds/NNNN/embeddings; last: a round's are deleted once
    # the next round commits (a resume needs only the current round's; 12,000 x 1280 floats are 61 MB a round)
    keep_embeddings: KeepEmbeddings = "all"


@dataclass(frozen=True)
class TrackConfig:
    """Experiment tracking (README "Tracking"); off while both keys are empty. Not part of a run's identity:
    adding it to a finished or stopped run logs that run (ray_al.loop.rounds.open_run ignores this section)."""

    mlflow: str = ""  # MLflow tracking URI: a directory or file: URI (file store) or http(s)://host:port
    wandb: str = ""  # W&B project (WANDB_MODE=offline: local files only, no account)
    experiment: str = ""  # MLflow experiment and W&B group; empty = "ray_al" (a sweep: its name)


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    al: ALConfig = field(default_factory=ALConfig)
    run: RunConfig = field(default_factory=RunConfig)
    track: TrackConfig = field(default_factory=TrackConfig)

    def to_dict(self) -> dict:
        return {s.name: _plain(dataclasses.asdict(getattr(self, s.name))) for s in dataclasses.fields(self)}


SECTIONS: dict[str, type] = {f.name: f.default_factory for f in dataclasses.fields(Config)}  # type: ignore[misc]


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


def _coerce(where: str, value: Any, annotation: Any) -> Any:
    """Check/convert `value` to the field's declared type; ConfigError names `where` otherwise."""
    hint = annotation
    origin = typing.get_origin(hint)
    if origin is Literal:  # outside the try: its ConfigError is a ValueError
        return _choice(where, value, typing.get_args(hint))
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
                return value.lower() in ("true", "yes", "1")
            raise TypeError
        if hint is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if hint is str:
            if isinstance(value, (dict, list)):
                raise TypeError
            return "" if value is None else str(value)
        if origin is tuple:
            items = value if isinstance(value, (list, tuple)) else [value]
            (inner, _ellipsis) = typing.get_args(hint)
            return tuple(_coerce(where, v, inner) for v in items)
        if hint is dict or origin is dict:
            if value is None:
                return {}
            if not isinstance(value, dict):
                raise TypeError
            return dict(value)
    except (TypeError, ValueError):
        pass
    else:
        return value
    raise ConfigError(f"config key '{where}': {value!r} is not a valid {getattr(hint, '__name__', hint)}.")


def _choice(where: str, value: Any, valid: tuple[str, ...]) -> str:
    if isinstance(value, str) and value in valid:
        return value
    raise ConfigError(f"{where}='{value}' is not valid; choose one of {', '.join(valid)}."
                      f"{_suggest(str(value), list(valid))}")


def _build_section(name: str, values: dict) -> Any:
    cls = SECTIONS[name]
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in valid:
            raise ConfigError(
                f"unknown config key '{name}.{key}'.{_suggest(key, valid)} "
                f"Valid keys in '{name}': {', '.join(valid)}."
            )
        kwargs[key] = _coerce(f"{name}.{key}", value, hints[key])
    return cls(**kwargs)


def from_dict(raw: dict | None) -> Config:
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError("a config file must be a mapping of sections (data, model, train, ...).")
    for section, values in raw.items():
        if section not in SECTIONS:
            raise ConfigError(
                f"unknown config section '{section}'.{_suggest(section, list(SECTIONS))} "
                f"Valid sections: {', '.join(SECTIONS)}."
            )
        if not isinstance(values, dict):
            raise ConfigError(f"config section '{section}' must be a mapping of key: value, got {values!r}.")
    return Config(**{name: _build_section(name, raw.get(name) or {}) for name in SECTIONS})


def parse_override(text: str) -> tuple[str, str, Any]:
    """`section.key=value` -> (section, key, value parsed as YAML, so 3 -> int and [1,2] -> list)."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"override '{text}' must look like section.key=value, e.g. al.rounds=3.")
    dotted, value_text = text.split("=", 1)
    section, key = dotted.split(".", 1)
    try:
        value = yaml.safe_load(value_text) if value_text != "" else ""
    except yaml.YAMLError:
        value = value_text
    if "." in key:  # nested dict option: train.ssl_options.temperature=0.1
        key, sub = key.split(".", 1)
        value = {sub: value}
    return section, key, value


def read_yaml(path: str | Path, what: str = "config file", hint: str = "The shipped configs are in configs/.") -> Any:
    """A YAML file's content ({} when empty); ConfigError naming `what` if it is missing or malformed."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} '{path}' not found. {hint}")
    try:
        return yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} '{path}' is not valid YAML: {exc}") from exc


def apply_overrides(raw: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """A copy of raw sections with `section.key=value` overrides applied (nested options merge)."""
    out = {k: dict(v or {}) if isinstance(v, dict) or v is None else v for k, v in raw.items()}
    for text in overrides:
        section, key, value = parse_override(text)
        sect = out.setdefault(section, {})
        if not isinstance(sect, dict):
            raise ConfigError(f"config section '{section}' must be a mapping.")
        if isinstance(value, dict) and isinstance(sect.get(key), dict):
            sect[key] = {**sect[key], **value}
        else:
            sect[key] = value
    return out


def load(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    raw = read_yaml(path) if path else {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file '{path}' must be a mapping of sections, got {type(raw).__name__}.")
    return from_dict(apply_overrides(raw, overrides))


def replace(cfg: Config, **sections: dict) -> Config:
    """A copy of cfg with some keys of some sections changed: replace(cfg, al={"rounds": 2})."""
    new = {}
    for name, values in sections.items():
        current = dataclasses.asdict(getattr(cfg, name))
        current.update(values)
        new[name] = _build_section(name, current)
    return dataclasses.replace(cfg, **new)


def smoke(cfg: Config) -> Config:
    """Shrink everything to seconds: tiny pool, one epoch, two rounds, CPU only (CI runs every entry point
    so, on machines without GPUs, where a GPU request would wait forever)."""
    return replace(
        cfg,
        embed={"batch_size": min(cfg.embed.batch_size, 128), "gpus_per_actor": 0.0},
        data={"pool_size": min(cfg.data.pool_size or 400, 400), "test_size": min(cfg.data.test_size or 200, 200)},
        train={"epochs": 1, "pretrain_epochs": 1, "batch_size": min(cfg.train.batch_size, 32),
               "unlabeled_batch_size": min(cfg.train.unlabeled_batch_size, 32), "use_gpu": False},
        al={"rounds": min(cfg.al.rounds, 2), "initial_size": min(cfg.al.initial_size, 20), "budget": min(cfg.al.budget, 20),
            "budgets": tuple(min(b, 20) for b in cfg.al.budgets[:2])},
    )


def head_only(cfg: Config) -> bool:
    """Rounds train only the head: the encoder stays as pre-trained (or given) for the whole run."""
    return cfg.train.mode not in ("joint", "finetune") and not cfg.train.finetune


def round_budget(cfg: Config, r: int) -> int:
    """Labels queried in round r: al.budgets[r] when a schedule is given, else al.budget."""
    return int(cfg.al.budgets[r]) if cfg.al.budgets else cfg.al.budget


def describe() -> str:
    """Every section and key with its default, for --help and the README."""
    lines = []
    for name, cls in SECTIONS.items():
        section = cls()
        lines.append(f"{name}:")
        for f in dataclasses.fields(section):
            lines.append(f"  {f.name} = {_plain(getattr(section, f.name))!r}")
    return "\n".join(lines)

