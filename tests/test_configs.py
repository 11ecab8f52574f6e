"""The shipped configs/: every file loads with the strict loader, passes the round loop's checks, builds its
learner, fits its labelling plan in the pool, and the paper protocols keep the papers' numbers."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

from ray_al.core import config
from ray_al.core.config import Config
from ray_al.loop.rules import check_budget, check_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
PAPERS = REPO.parent / "shared" / "papers"
EXPERIMENTS = sorted(p for p in CONFIGS.glob("*.yaml") if not p.name.startswith("sweep_"))
SWEEPS = sorted(CONFIGS.glob("sweep_*.yaml"))
PAPER_CONFIGS = sorted(p for p in EXPERIMENTS if p.stem.endswith("_cifar10"))
# Training-set sizes of the built-in datasets (digits: the pool is 80% of sklearn's 1,797 images).
POOL_ROWS = {"cifar10": 50000, "digits": 1797 - round(0.2 * 1797)}


def test_the_expected_files_are_there():
    names = {p.name for p in CONFIGS.glob("*.yaml")}
    assert {"default.yaml", "cifar10.yaml", "mobyv2al_cifar10.yaml", "dalbt_cifar10.yaml",
            "simsiam_pretrain_cifar10.yaml", "rotnet_entropy_cifar10.yaml", "zeroshot_kcenter_cifar10.yaml",
            "sweep_digits.yaml"} <= names


def test_default_yaml_is_the_embedded_default():
    assert config.load(CONFIGS / "default.yaml") == Config()
    # and it spells out every key, so it documents them all
    raw = yaml.safe_load((CONFIGS / "default.yaml").read_text())
    assert raw == Config().to_dict()


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_config_loads_strictly_and_passes_the_cycle_checks(path):
    cfg = config.load(path)  # unknown keys or wrong types raise ConfigError
    check_config(cfg)
    smoke = config.smoke(cfg)
    check_config(smoke)
    rows = cfg.data.pool_size or POOL_ROWS[cfg.data.dataset]
    check_budget(cfg, rows)  # initial + rounds x budget fits in the pool
    assert cfg.run.dir.startswith("runs/") and cfg.run.dir != "runs/default" or path.name == "default.yaml"


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_config_builds_its_learner(path):
    """ssl_options must be accepted by the SSL method's constructor (build() rejects unknown ones)."""
    from ray_al.models import JointLearner, LearnerSpec

    cfg = config.load(path)
    size, channels = (8, 1) if cfg.data.dataset == "digits" else (32, 3)
    learner = JointLearner(LearnerSpec(cfg.model.backbone, 10, channels, size, (0.5,) * channels, (0.25,) * channels,
                                       ssl=cfg.train.method, ssl_options=dict(cfg.train.ssl_options),
                                       dropout=cfg.model.dropout))
    logits, feats = learner(torch.rand(2, channels, size, size))
    assert logits.shape == (2, 10) and feats.shape[0] == 2
    if cfg.train.method != "none":
        assert set(cfg.train.ssl_options) <= set(type(learner.ssl).options())


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=lambda p: p.name)
def test_paper_config_names_its_paper_and_says_what_differs(path):
    text = path.read_text()
    papers = re.findall(r"\.\./shared/papers/([\w.-]+\.md)", text)
    assert papers, f"{path.name} does not cite its paper under ../shared/papers/"
    for name in papers:
        assert (PAPERS / name).is_file(), f"{path.name} cites {name}, which is not in {PAPERS}"
    comments = " ".join(line for line in text.splitlines() if line.lstrip().startswith("#")).lower()
    assert any(w in comments for w in ("not stated", "scaled", "approximated", "differences")), path.name


# The papers' numbers (../shared/papers/*.md), written down once more so an edit that drifts from the
# protocol fails here. (backbone, SSL method, mode, epochs per cycle, lr, batch, initial, budget,
# final labels, acquisition)
PROTOCOLS = {
    # VGG-16, 200 epochs, lr 0.01, batch 128, CoreSet; 1k initial + 1k per cycle
    "mobyv2al_cifar10.yaml": ("vgg16_bn", "moby", "joint", 200, 0.01, 128, 1000, 1000, 10000, "kcenter"),
    # VGG16, 150 epochs, lr 1e-3, batch 64, Weibull; 5k initial + 2.5k per round up to 40% (20k)
    "dalbt_cifar10.yaml": ("vgg16_bn", "barlow_twins", "joint", 150, 0.001, 64, 5000, 2500, 20000, "weibull"),
    # SimSiam (ResNet-18) pre-training, linear head on frozen features; 1% budgets up to 10%
    "simsiam_pretrain_cifar10.yaml": ("resnet18", "simsiam", "pretrain", 50, 0.06, 512, 500, 500, 5000, "entropy"),
    # RotNet ResNet-18, 100 pre-training epochs, batch 512, lr 0.3; 50 epochs per cycle, 20% -> 50%
    "rotnet_entropy_cifar10.yaml": ("resnet18", "rotnet", "pretrain", 50, 0.3, 512, 10000, 2500, 25000, "entropy"),
    # MoCo-v2 features once, k-center order; budgets 5k..25k by 2.5k
    "zeroshot_kcenter_cifar10.yaml": ("wrn28_2", "mocov2", "pretrain", 50, 0.06, 512, 5000, 2500, 25000, "kcenter"),
}


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_paper_protocol_numbers(name):
    cfg = config.load(CONFIGS / name)
    backbone, method, mode, epochs, lr, batch, initial, budget, final, select = PROTOCOLS[name]
    assert (cfg.model.backbone, cfg.train.method, cfg.train.mode) == (backbone, method, mode)
    assert (cfg.train.epochs, cfg.train.lr, cfg.train.batch_size) == (epochs, lr, batch)
    assert (cfg.al.initial_size, cfg.al.budget, cfg.select.method) == (initial, budget, select)
    assert cfg.al.initial_size + cfg.al.rounds * cfg.al.budget == final
    assert cfg.data.dataset == "cifar10" and cfg.train.use_gpu  # the full protocols are GPU runs


def test_paper_specific_settings():
    moby = config.load(CONFIGS / "mobyv2al_cifar10.yaml").train
    assert moby.milestones == (0.6, 0.8)  # epochs 120 and 160 of 200
    assert moby.ssl_options == {"queue_size": 4096, "temperature": 0.2, "momentum": 0.99, "alternate_views": True}
    dalbt = config.load(CONFIGS / "dalbt_cifar10.yaml")
    assert dalbt.train.ssl_options["lambd"] == 0.001 and dalbt.train.weight_decay == 1e-5
    assert dalbt.data.pool_size == 45000  # 5,000 of the 50,000 held out for validation
    rot = config.load(CONFIGS / "rotnet_entropy_cifar10.yaml").train
    assert rot.pretrain_epochs == 100 and rot.finetune is True
    assert (rot.optimizer, rot.lr_schedule, rot.pretrain_lr) == ("adam", "cosine", 0.3)  # the paper's
    simsiam = config.load(CONFIGS / "simsiam_pretrain_cifar10.yaml").train
    assert simsiam.finetune is False and simsiam.pretrain_epochs == 800
    assert (simsiam.lr_schedule, simsiam.pretrain_lr) == ("cosine", 0.06)
    zero = config.load(CONFIGS / "zeroshot_kcenter_cifar10.yaml")
    assert zero.select.zero_shot and zero.train.finetune is False  # one k-center order of fixed SSL features


def test_cifar10_yaml_is_cpu_sized():
    cfg = config.load(CONFIGS / "cifar10.yaml")
    assert cfg.data.dataset == "cifar10" and cfg.model.backbone == "small_cnn"
    assert 1000 <= cfg.data.pool_size <= 10000 and not cfg.train.use_gpu and cfg.embed.gpus_per_actor == 0


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_sweep_file_builds_every_trial(path):
    from ray_al.loop.sweep_plan import load_plan

    plan = load_plan(path)
    trials = plan.points()
    assert len(trials) == len({tuple(sorted(t.items())) for t in trials}) >= 2
    for values in trials:
        cfg = plan.trial_config(values)
        for key, value in values.items():
            section, field = key.split(".", 1)
            assert getattr(getattr(cfg, section), field) == value
        check_budget(cfg, cfg.data.pool_size or POOL_ROWS[cfg.data.dataset])
