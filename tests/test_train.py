"""The training loop (plain PyTorch, no Ray) and `ray_al.workers.train.fit` through Ray Train for every SSL method.

Full `python -m ray_al.cycle --smoke-test` runs per method take minutes each (Ray Train start-up per round);
here each method is one TorchTrainer run on a tiny digits pool, in one module-scoped local Ray.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ray_al.core import config as config_mod
from ray_al.models import trainloop as tl
from ray_al.core.config import ConfigError
from ray_al.models import JointLearner, LearnerSpec
from ray_al.ssl import METHODS

SSL_METHODS = sorted(METHODS)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------- pure loop


def test_ids_to_keys_are_stable_and_distinct() -> None:
    ints = np.array([5, 1, 2**40, -3], dtype=np.int64)
    k = tl.ids_to_keys(ints)
    assert k.dtype == np.int64 and len(set(k.tolist())) == 4
    assert np.array_equal(k, tl.ids_to_keys(ints.copy()))
    assert np.array_equal(tl.ids_to_keys(ints[[1, 0]]), k[[1, 0]])  # a key depends on the id only
    s = tl.ids_to_keys(np.array(["a/1.png", "b/2.png", "a/1.png"], dtype=object))
    assert s[0] == s[2] != s[1]
    # blake2b of the utf-8 id, little-endian signed: an independent recomputation
    import hashlib

    ref = int.from_bytes(hashlib.blake2b(b"b/2.png", digest_size=8).digest(), "little", signed=True)
    assert s[1] == ref


def test_view_seeds_depend_on_sample_epoch_and_step_only() -> None:
    keys = torch.from_numpy(tl.ids_to_keys(np.arange(6)))
    a = tl.view_seeds(keys, seed=3, epoch=1, step=2)
    assert torch.equal(tl.view_seeds(keys[3:], 3, 1, 2), a[3:])  # same sample, any batch
    assert not torch.equal(tl.view_seeds(keys, 3, 2, 2), a)
    assert not torch.equal(tl.view_seeds(keys, 3, 1, 3), a)
    assert not torch.equal(tl.view_seeds(keys, 4, 1, 2), a)


@pytest.mark.parametrize("n,batch,world", [(16, 4, 2), (37, 5, 3), (5, 4, 2)])
def test_global_batches_are_the_one_worker_batches_split_by_rank(n: int, batch: int, world: int) -> None:
    one = tl.cycling_batches(n, batch * world, tl.epoch_generator(7, 1, 0))
    ranks = [tl.cycling_batches(n, batch, tl.epoch_generator(7, 1, 0), world, r) for r in range(world)]
    for _ in range(5):
        whole = next(one)
        parts = [next(it) for it in ranks]
        assert torch.equal(torch.cat(parts), whole)
        if n >= batch * world:
            assert all(len(p) == batch for p in parts)


def test_steps_per_epoch() -> None:
    assert tl.steps_per_epoch(100, 0, 32, 64, ssl=False) == 4
    assert tl.steps_per_epoch(100, 1000, 32, 64, ssl=True) == math.ceil(1000 / 64)
    assert tl.steps_per_epoch(100, 1000, 32, 64, ssl=True, world=2) == math.ceil(1000 / 128)
    assert tl.steps_per_epoch(100, 500, 32, 64, ssl=True, world=2, ssl_global=False) == math.ceil(500 / 64)
    assert tl.steps_per_epoch(0, 300, 32, 64, ssl=True, ce=False) == 5


def _digits(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy((d.images[:n] / 16 * 255).astype(np.uint8)[..., None])  # (n, 8, 8, 1)
    return x, torch.from_numpy(d.target[:n].astype(np.int64))


def _run(method: str, epochs: int, seed: int = 0, ssl_options: dict | None = None) -> tuple[JointLearner, dict]:
    x, y = _digits(96)
    torch.manual_seed(seed)
    learner = JointLearner(LearnerSpec("small_cnn", 10, 1, 8, (0.3,), (0.36,), ssl=method,
                                       ssl_options=ssl_options if method != "none" else None))
    data = tl.TrainTensors(x[:24], y[:24], x[24:], torch.from_numpy(tl.ids_to_keys(np.arange(24))),
                           torch.from_numpy(tl.ids_to_keys(np.arange(24, 96))))
    n = tl.steps_per_epoch(24, 96, 8, 16, method != "none")
    plan = tl.EpochPlan(seed=seed, epochs=epochs, n_steps=n, batch_size=8, unlabeled_batch_size=16, ssl_weight=1.0,
                        use_ssl=method != "none")
    opt, sched = tl.make_optimizer(learner.trainable_parameters(), 0.05, 0.9, 5e-4, n * epochs, (0.6, 0.8))
    state = tl.TrainState(tl.JointObjective(learner), learner, opt, sched)
    m = {}
    for e in range(epochs):
        m = tl.train_epoch(state, data, plan, e)
    return learner, m


def test_train_epoch_is_deterministic_and_learns() -> None:
    a, ma = _run("moby", 2, ssl_options={"flip": False, "queue_size": 64})
    b, mb = _run("moby", 2, ssl_options={"flip": False, "queue_size": 64})
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    assert ma == mb and ma["ssl"] > 0 and ma["images"] == 6 * (8 + 16)
    c, _ = _run("moby", 2, seed=1, ssl_options={"flip": False, "queue_size": 64})
    assert not torch.equal(a.classifier.weight, c.classifier.weight)


@pytest.mark.parametrize("optimizer,schedule", [("sgd", "step"), ("adam", "cosine")])
def test_checkpoint_loads_with_weights_only_and_resumes(tmp_path, optimizer: str, schedule: str) -> None:
    """The worker's checkpoint holds only tensors and plain types (MultiStepLR's milestones Counter is on
    torch's allow-list), so the driver and a restarted worker load it with weights_only=True."""
    from ray_al.workers.train import CHECKPOINT_FILE, load_checkpoint

    def state() -> tl.TrainState:
        torch.manual_seed(0)
        learner = JointLearner(LearnerSpec("small_cnn", 10, 1, 8, (0.3,), (0.36,), ssl="moby",
                                           ssl_options={"queue_size": 64}))
        opt, sched = tl.make_optimizer(learner.trainable_parameters(), 0.05, 0.9, 5e-4, 12, (0.6, 0.8), optimizer,
                                       schedule)
        return tl.TrainState(tl.JointObjective(learner), learner, opt, sched)

    x, y = _digits(48)
    data = tl.TrainTensors(x[:16], y[:16], x[16:])
    plan = tl.EpochPlan(seed=0, epochs=3, n_steps=2, batch_size=8, unlabeled_batch_size=16, ssl_weight=1.0,
                        use_ssl=True)
    a = state()
    tl.train_epoch(a, data, plan, 0)
    torch.save(a.checkpoint(0), tmp_path / CHECKPOINT_FILE)
    b = state()
    assert b.restore(load_checkpoint(str(tmp_path))) == 1
    for s in (a, b):
        torch.manual_seed(7)
        tl.train_epoch(s, data, plan, 1)
    for (k, va), vb in zip(a.learner.state_dict().items(), b.learner.state_dict().values()):
        assert torch.equal(va, vb), k
    assert a.scheduler.state_dict() == b.scheduler.state_dict()


def test_train_spec_is_typed_checked_and_sorted() -> None:
    from ray_al.data.pool import PoolSpec
    from ray_al.core.faults import FaultInjection
    from ray_al.workers.train import TrainRequest, train_spec

    pool = PoolSpec("p", "t", 10, tuple("0123456789"), 8, 1, (0.3,), (0.36,), "image", "int64", 100, True)
    cfg = config_mod.load(None, ["train.method=simsiam", "train.pretrain_lr=0.5"])
    fault = FaultInjection(epoch=1, marker="/tmp/m")
    request = TrainRequest(name="r", labeled_ids=np.array([7, 2, 5]), labeled_labels=np.array([1, 2, 3]), seed=4,
                           epochs=2, fault_injection=fault)
    spec = train_spec(cfg, pool, request)
    assert spec.request.sharding == "split"  # an argument, not a config key
    assert spec.request.labeled_ids.tolist() == [2, 5, 7] and spec.request.labeled_labels.tolist() == [2, 3, 1]
    assert request.labeled_ids.tolist() == [7, 2, 5]  # the request itself is left as it was
    assert spec.use_ssl and spec.has_unlabeled and spec.lr == cfg.train.lr and spec.train is cfg.train
    assert spec.fault_injection is fault and spec.request.seed == 4 and spec.request.name == "r"
    assert spec.learner["ssl"] == "simsiam" and spec.init_state is None
    pre = train_spec(cfg, pool, TrainRequest(name="p", labeled_ids=np.zeros(0, np.int64),
                                             labeled_labels=np.zeros(0, np.int64), seed=0, epochs=1, use_ce=False,
                                             ssl_on_pool=False))
    assert pre.lr == 0.5 and not pre.has_unlabeled  # pre-training has its own lr
    one = dict(name="x", labeled_ids=[1], labeled_labels=[0], seed=0, epochs=1)
    with pytest.raises(ConfigError, match="sharding='shards' is not valid; choose one of split, replicate"):
        train_spec(cfg, pool, TrainRequest(**one, sharding="shards"))
    with pytest.raises(ValueError, match="needs an SSL method"):
        train_spec(cfg, pool, TrainRequest(**one, method="none", use_ssl=True))


def test_ssl_defaults() -> None:
    from ray_al.data.pool import PoolSpec
    from ray_al.models.weights import build_learner, learner_kwargs, ssl_defaults

    grey = PoolSpec("p", "t", 10, tuple("0123456789"), 8, 1, (0.3,), (0.36,), "image", "int64", 100, True)
    rgb = PoolSpec("p", "t", 10, tuple("0123456789"), 32, 3, (0.5,) * 3, (0.25,) * 3, "image", "int64", 100, True)
    assert ssl_defaults("none", grey) == {}
    assert ssl_defaults("moby", grey) == {"flip": False} and ssl_defaults("moby", rgb) == {}
    assert ssl_defaults("barlow_twins", rgb) == {"scale": 1 / 32}
    cfg = config_mod.load(None, ["train.method=barlow_twins", "train.ssl_options.scale=0.5"])
    assert learner_kwargs(cfg, grey)["ssl_options"] == {"flip": False, "scale": 0.5}  # explicit options win
    build_learner(learner_kwargs(cfg, grey))  # every default is a valid option of the method


def test_sizes_are_checked_before_ray_train_starts() -> None:
    from ray_al.workers.train import _check_sizes

    with pytest.raises(ConfigError, match="labeled images cannot feed train.num_workers=4"):
        _check_sizes(7, 100, 4, 8, use_ce=True, use_ssl=False)
    with pytest.raises(ConfigError, match="batch_size=1"):
        _check_sizes(100, 100, 1, 1, use_ce=True, use_ssl=False)
    with pytest.raises(ConfigError, match="self-supervised"):
        _check_sizes(0, 3, 2, 8, use_ce=False, use_ssl=True)
    _check_sizes(8, 8, 4, 2, use_ce=True, use_ssl=True)


# ----------------------------------------------------------------------------- through Ray Train


@pytest.fixture(scope="module")
def pool(ray_local, tmp_path_factory):
    from ray_al.data.pool import prepare, read_labels

    root = tmp_path_factory.mktemp("train")
    cfg = config_mod.load(None, ["data.pool_size=64", "data.test_size=10"])
    spec = prepare(cfg.data, str(root), seed=0)
    ids, labels = read_labels(spec.pool_uri)
    order = np.argsort(ids)[:16]
    return spec, np.asarray(ids)[order], np.asarray(labels)[order], root


def _cfg(method: str, **train) -> config_mod.Config:
    overrides = [f"train.method={method}", "train.batch_size=8", "train.unlabeled_batch_size=16"]
    if method in ("moby", "mocov2"):
        overrides.append("train.ssl_options.queue_size=64")  # small queues: cheaper steps
    cfg = config_mod.load(None, overrides)
    return config_mod.replace(cfg, train=train) if train else cfg


def _fresh(spec, method: str) -> dict:
    from ray_al.models.weights import build_learner, learner_kwargs

    torch.manual_seed(0)
    return build_learner(learner_kwargs(_cfg(method), spec)).state_dict()


@pytest.mark.parametrize("method", [m for m in SSL_METHODS if m != "moby"])
def test_joint_epoch_of_every_ssl_method(pool, method: str) -> None:
    """The joint objective (CE + SSL) of every method through the epoch code the Ray Train workers run
    (`trainloop.train_epoch`, here in this process: one Ray Train fit per method would add ~30 s each to
    the suite; the fit itself is tested with the default method and with none, below)."""
    from ray_al.bench.train import run_plain

    spec = pool[0]
    out = run_plain(_cfg(method), spec, epochs=1, threads=1, seed=0)
    (epoch,) = out["history"]
    assert math.isfinite(epoch["loss"]) and epoch["ce"] > 0 and epoch["ssl"] != 0.0 and epoch["images"] > 0


@pytest.mark.parametrize("method", ["none", "moby"])
def test_fit_joint_every_method(pool, method: str) -> None:
    from ray_al.workers.train import TrainRequest, fit
    from ray_al.models.weights import build_learner, learner_kwargs

    spec, ids, labels, root = pool
    cfg = _cfg(method)
    out = fit(cfg, spec, TrainRequest(name=f"joint_{method}", labeled_ids=ids, labeled_labels=labels, seed=0,
                                      epochs=1, progress=False), storage_uri=str(root / "ray_train"))
    assert out.metrics["epoch"] == 0 and out.metrics["start_epoch"] == 0 and len(out.history) == 1
    assert math.isfinite(out.metrics["loss"]) and out.metrics["ce"] > 0
    if method == "none":
        assert out.metrics["ssl"] == 0.0 and out.metrics["steps"] == 2  # 16 labeled / batch 8
    else:
        assert out.metrics["ssl"] != 0.0 and out.metrics["steps"] == 4  # 64 pool images / SSL batch 16
    assert len(out.nodes) == 1
    # the labeled read found the 16 rows by id in the driver (data.reader.read_ids), and says what it read
    assert out.metrics["labeled_read_rows"] == 16 and out.metrics["labeled_read_seconds"] > 0
    assert 1 <= out.metrics["labeled_read_row_groups_read"] <= out.metrics["labeled_read_row_groups"]
    learner = build_learner(learner_kwargs(cfg, spec))
    learner.load_state_dict(out.state_dict)  # strict: the weights fit the embed stage's learner
    init = _fresh(spec, method)
    assert not torch.equal(out.state_dict["classifier.weight"], init["classifier.weight"])


def test_fit_pretrain_then_linear_head(pool) -> None:
    """pretrain mode: SSL only on the whole pool (no CE), then a head-only round on frozen features."""
    from ray_al.workers.train import TrainRequest, fit

    spec, ids, labels, root = pool
    cfg = _cfg("simsiam")
    pre = fit(cfg, spec, TrainRequest(name="pretrain", labeled_ids=np.zeros(0, np.int64),
                                      labeled_labels=np.zeros(0, np.int64), seed=0, epochs=1, use_ce=False,
                                      use_ssl=True, progress=False), storage_uri=str(root / "ray_train"))
    init = _fresh(spec, "simsiam")
    assert pre.metrics["ce"] == 0.0 and pre.metrics["ssl"] != 0.0
    assert torch.equal(pre.state_dict["classifier.weight"], init["classifier.weight"])  # no CE: untouched
    enc = [k for k in init if k.startswith("encoder.") and k.endswith("weight")]
    assert any(not torch.equal(pre.state_dict[k], init[k]) for k in enc)
    head = fit(cfg, spec, TrainRequest(name="head", labeled_ids=ids, labeled_labels=labels, seed=1, epochs=1,
                                       use_ssl=False, head_only=True, init_state=pre.state_dict, progress=False),
               storage_uri=str(root / "ray_train"))
    assert head.metrics["ssl"] == 0.0
    for k in (k for k in init if k.startswith("encoder.")):  # frozen features: weights and BN statistics
        assert torch.equal(head.state_dict[k], pre.state_dict[k]), k
    assert not torch.equal(head.state_dict["classifier.weight"], pre.state_dict["classifier.weight"])


def test_optimizers_and_schedules() -> None:
    """step: 10x drops at the milestones; cosine: lr*(1+cos(pi*t/T))/2 down to 0; adam or sgd as named."""
    def lrs(schedule: str, optimizer: str = "sgd") -> tuple[torch.optim.Optimizer, list[float]]:
        w = torch.nn.Parameter(torch.zeros(3))
        opt, sched = tl.make_optimizer([w], 0.1, 0.9, 0.0, 10, (0.5, 0.8), optimizer, schedule)
        seen = []
        for _ in range(10):
            seen.append(opt.param_groups[0]["lr"])
            w.sum().backward()
            opt.step()
            sched.step()
        return opt, seen

    opt, step = lrs("step")
    assert isinstance(opt, torch.optim.SGD)
    np.testing.assert_allclose(step, [0.1] * 5 + [0.01] * 3 + [0.001] * 2)
    opt, cosine = lrs("cosine", "adam")
    assert isinstance(opt, torch.optim.Adam)
    np.testing.assert_allclose(cosine, [0.05 * (1 + math.cos(math.pi * t / 10)) for t in range(10)], atol=1e-9)
    with pytest.raises(ValueError, match="train.optimizer='lamb'"):
        tl.make_optimizer([torch.nn.Parameter(torch.zeros(1))], 0.1, 0.9, 0.0, 10, (0.5,), "lamb", "step")


def test_epoch_lines_print_the_end_and_at_most_one_line_per_interval(capsys) -> None:
    """In logs (no terminal) training progress is a line now and then, not tqdm's lines per epoch."""
    from ray_al.workers.train import ProgressLines

    lines = ProgressLines(total=50, desc="train round 3", every_s=3600.0)
    for epoch in range(50):
        lines.set_description(f"train round 3 loss {1.0 / (epoch + 1):.3f}")
        lines.update(1)
    assert capsys.readouterr().out.splitlines() == ["train round 3 loss 0.020: epoch 50/50"]
    chatty = ProgressLines(total=3, desc="pretrain", every_s=0.0)
    for _ in range(3):
        chatty.update(1)
    assert capsys.readouterr().out.splitlines() == [f"pretrain: epoch {i}/3" for i in (1, 2, 3)]
    fast = ProgressLines(total=5, desc="decoding", every_s=3600.0, unit="images", quiet_if_fast=True)
    fast.update(5)
    assert capsys.readouterr().out == ""
