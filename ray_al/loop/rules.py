"""The rules a config must keep before any work starts, in one place.

Values of one key are checked when the config loads (ray_al.core.config: types and `Literal` choices).
Here are the rest: names that registries hold (SSL methods, backbones, acquisition strategies, score-based
pre-filters, fallbacks), ranges, and the rules that join several keys (a pretrain run needs an SSL method,
select.shards needs plain k-center, SSL features need a run that has them). `check_budget` weighs the
labelling plan against the prepared pool. Every error names the keys and says what to set.
"""
from __future__ import annotations

from ray_al.acquisition.policy import AUTO
from ray_al.core import config as config_mod
from ray_al.core.config import BudgetError, Config, ConfigError
from ray_al.core.registry import Registry, UnknownNameError

__all__ = ["check_budget", "check_config", "check_embeddings_run"]


def check_config(cfg: Config) -> None:
    """Cheap checks before any work: names that exist, values in range, keys that fit together."""
    try:
        _check_names(cfg)
    except UnknownNameError as exc:  # a registry's message names the key and the valid names
        raise ConfigError(str(exc)) from None
    weights = has_weights(cfg)
    if cfg.train.mode in ("pretrain", "frozen") and cfg.train.method == "none" and not (
            cfg.train.checkpoint or (weights and cfg.train.mode == "frozen")):
        raise ConfigError(f"train.mode={cfg.train.mode} needs an SSL train.method (e.g. simsiam), train.checkpoint "
                          "or model.weights (e.g. model.backbone=efficientnet_lite0 model.weights=imagenet).")
    if cfg.train.mode == "finetune" and not (cfg.train.checkpoint or weights):
        raise ConfigError("train.mode=finetune trains from pretrained weights: set model.weights (imagenet or a "
                          "state dict file) or train.checkpoint.")
    if cfg.train.unlabeled_per_round < 0:
        raise ConfigError(f"train.unlabeled_per_round must be >= 0 (0 = the whole pool), got "
                          f"{cfg.train.unlabeled_per_round}.")
    if cfg.select.auto_switch_per_class < 0:
        raise ConfigError(f"select.auto_switch_per_class must be >= 0 (0: switch once the model is confident, "
                          f"N > 0: at N labels per class), got {cfg.select.auto_switch_per_class:g}.")
    if cfg.select.committee_size < 2:
        raise ConfigError(f"select.committee_size must be >= 2 (a committee of one never disagrees), "
                          f"got {cfg.select.committee_size}.")
    for key in ("initial_size", "budget", "rounds"):
        if getattr(cfg.al, key) < (1 if key != "rounds" else 0):
            raise ConfigError(f"al.{key} must be positive, got {getattr(cfg.al, key)}.")
    if cfg.al.budgets and (len(cfg.al.budgets) != cfg.al.rounds or min(cfg.al.budgets) < 1):
        raise ConfigError(f"al.budgets={list(cfg.al.budgets)} must hold one positive batch size per round: "
                          f"al.rounds={cfg.al.rounds}, so give {cfg.al.rounds} sizes or set al.rounds="
                          f"{len(cfg.al.budgets)}.")
    _check_shards(cfg)


def check_budget(cfg: Config, pool_rows: int) -> None:
    """The labelling plan (seed set + every round's batch) fits in a pool of `pool_rows` images."""
    queried = [config_mod.round_budget(cfg, r) for r in range(cfg.al.rounds)]
    needed = cfg.al.initial_size + sum(queried)
    if needed > pool_rows:
        plan = (f"al.budgets={list(cfg.al.budgets)}" if cfg.al.budgets
                else f"al.rounds={cfg.al.rounds} x al.budget={cfg.al.budget}")
        raise BudgetError(
            f"the labelling plan needs {needed} labels (al.initial_size={cfg.al.initial_size} + {plan}) but the "
            f"pool has only {pool_rows} images. Lower al.budget(s) or al.rounds, or use a larger pool "
            "(data.pool_size=0 takes all of it)."
        )


def _check_shards(cfg: Config) -> None:
    """select.shards spreads plain k-center only; for anything else it would be ignored without a word."""
    if cfg.select.shards < 1:
        raise ConfigError(f"select.shards must be >= 1, got {cfg.select.shards}.")
    one_process = [f"select.method={cfg.select.method}"] if cfg.select.method != "kcenter" else []
    one_process += ["select.prefilter"] * bool(cfg.select.prefilter) + ["select.zero_shot"] * cfg.select.zero_shot
    if cfg.select.shards > 1 and one_process:
        raise ConfigError(f"select.shards={cfg.select.shards} spreads plain k-center over Ray actors, but "
                          f"{' with '.join(one_process)} runs in one process: set select.method=kcenter (no "
                          "pre-filter, no zero-shot) to shard, or select.shards=1.")


def _check_names(cfg: Config) -> None:
    from ray_al import acquisition, ssl
    from ray_al.models import BACKBONES

    if cfg.train.method != "none":
        ssl.METHODS.get(cfg.train.method)
    BACKBONES.get(cfg.model.backbone)
    _check_fallback(cfg)
    _check_features(cfg)
    if cfg.select.method == AUTO:
        if cfg.select.prefilter:
            raise ConfigError("select.method=auto picks its own methods and takes no select.prefilter; clear it.")
        return
    strategy = acquisition.get(cfg.select.method)
    if cfg.select.prefilter:
        # a pre-filter ranks by a score: the registry of score-based strategies names the right key
        scores: Registry = Registry("score-based acquisition method", "select.prefilter")
        for name, s in acquisition.ACQUISITIONS.items():
            if s.kind == "score":
                scores.add(name, s)
        scores.get(cfg.select.prefilter)
        if "prefilter" not in strategy.options:
            raise ConfigError(f"select.method={cfg.select.method} takes no pre-filter; clear select.prefilter or "
                              "use a diversity method such as kcenter or badge.")


def _check_features(cfg: Config) -> None:
    """al.initial and select.features=pretrained select on a self-supervised encoder's features."""
    if cfg.data.embeddings:
        _check_selection_only(cfg)
        return
    wants = [f"al.initial={cfg.al.initial}"] if cfg.al.initial != "random" else []
    wants += ["select.features=pretrained"] if cfg.select.features == "pretrained" else []
    if not wants:
        return
    if cfg.train.mode == "joint" and not cfg.train.checkpoint and not has_weights(cfg):
        # joint + a checkpoint or model.weights: features from them
        raise ConfigError(f"{' and '.join(wants)} select(s) on self-supervised features, which a joint run does "
                          "not have before its first round: set train.mode=pretrain (SSL once on the pool) or "
                          "train.checkpoint=RUN_DIR/pretrain/model.pt of an earlier pretrain run.")
    if cfg.select.features == "pretrained" and cfg.select.shards > 1:
        raise ConfigError("select.features=pretrained runs in one process: set select.shards=1.")


def _check_fallback(cfg: Config) -> None:
    from ray_al import acquisition

    methods: Registry = Registry("acquisition method", "select.fallback")  # its error names this key
    for name, strategy in acquisition.ACQUISITIONS.items():
        methods.add(name, strategy)
    fallback = methods.get(cfg.select.fallback)
    if "labeled_labels" in fallback.required:  # the one way a method is not ready yet (weibull)
        raise ConfigError(f"select.fallback={cfg.select.fallback} cannot stand in for a method that cannot run "
                          "yet: choose one that needs no labels per class, e.g. typiclust or random.")


def has_weights(cfg: Config) -> bool:
    """model.weights names pretrained weights (not random init)."""
    return cfg.model.weights not in ("", "none")


def _check_selection_only(cfg: Config) -> None:
    """data.embeddings: the user's features are the features; nothing trains, nothing else embeds."""
    training = [f"train.method={cfg.train.method}"] * (cfg.train.method != "none")
    training += [f"train.mode={cfg.train.mode}"] * (cfg.train.mode != "joint")
    training += ["train.checkpoint"] * bool(cfg.train.checkpoint)
    training += ["select.features=pretrained"] * (cfg.select.features == "pretrained")
    if training:
        raise ConfigError(f"data.embeddings runs selection only, on your features: {', '.join(training)} would "
                          "train or embed with a model. Clear them, or drop data.embeddings to train on images.")


# methods that read no class probabilities: what a user's embeddings without `probs` can run
WITHOUT_PROBS = ("random", "kcenter", "typiclust", "probcover", AUTO)


def check_embeddings_run(cfg: Config, has_labels: bool, has_probs: bool) -> None:
    """The oracle and the methods fit what the user's embeddings file holds (data.embeddings)."""
    from ray_al import acquisition

    if cfg.al.oracle == "simulated" and not has_labels:
        raise ConfigError(f"data.embeddings '{cfg.data.embeddings}' has no `label` column for the simulated oracle "
                          "to answer from: use al.oracle=file (your annotators), or add the labels you have.")
    if has_probs:
        return
    methods = {cfg.select.method, cfg.select.fallback} | ({cfg.al.initial} - {"random"})
    reads = {"probs", "labeled_probs", "committee_probs"}
    needy = sorted(m for m in methods - {AUTO} if acquisition.needs(m, optional=False) & reads
                   or (m == cfg.select.method and cfg.select.prefilter))
    if needy:
        raise ConfigError(f"{', '.join(needy)} read(s) class probabilities, which data.embeddings "
                          f"'{cfg.data.embeddings}' does not hold (no `probs` column): use one of "
                          f"{', '.join(WITHOUT_PROBS)} (select.method, select.fallback), or add your model's "
                          "softmax outputs as `probs`.")
