"""SSL losses against independent float64 numpy formulas, training on a toy problem, EMA schedule,
queues, and the distributed contract (gather order, 2 processes x b == 1 process x 2b)."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from ray_al import ssl
from ray_al.models import JointLearner, LearnerSpec

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------- numpy references


def np_logsumexp(a: np.ndarray, axis: int = -1) -> np.ndarray:
    m = a.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(a - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def np_normalize(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def np_info_nce(q: np.ndarray, k: np.ndarray, queue: np.ndarray, t: float) -> float:
    """-log exp(q.k/t) / (exp(q.k/t) + sum_j exp(q.queue_j/t)), averaged over the batch."""
    total = 0.0
    for qi, ki in zip(q, k):
        pos = qi @ ki / t
        neg = queue @ qi / t
        total += -pos + np_logsumexp(np.concatenate([[pos], neg]), 0)
    return total / len(q)


def np_barlow_twins(z1: np.ndarray, z2: np.ndarray, lambd: float, eps: float = 1e-5) -> float:
    n, d = z1.shape
    a = (z1 - z1.mean(0)) / np.sqrt(z1.var(0) + eps)  # numpy var is the biased one
    b = (z2 - z2.mean(0)) / np.sqrt(z2.var(0) + eps)
    c = np.einsum("ni,nj->ij", a, b) / n
    inv = sum((1 - c[i, i]) ** 2 for i in range(d))
    red = sum(c[i, j] ** 2 for i in range(d) for j in range(d) if i != j)
    return inv + lambd * red


def np_simsiam(p1: np.ndarray, p2: np.ndarray, z1: np.ndarray, z2: np.ndarray) -> float:
    def cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))

    return -0.5 * cos(p1, z2).mean() - 0.5 * cos(p2, z1).mean()


def np_nt_xent(z1: np.ndarray, z2: np.ndarray, t: float) -> float:
    z = np_normalize(np.concatenate([z1, z2]))
    n2 = len(z)
    total = 0.0
    for i in range(n2):
        j = (i + n2 // 2) % n2  # the other view of the same image
        others = [z[i] @ z[k] / t for k in range(n2) if k != i]
        total += -(z[i] @ z[j] / t) + np_logsumexp(np.array(others), 0)
    return total / n2


def np_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean([np_logsumexp(row, 0) - row[y] for row, y in zip(logits, labels)]))


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


# ----------------------------------------------------------------------------- pure loss functions


def test_info_nce_matches_numpy() -> None:
    g = torch.Generator().manual_seed(0)
    q, k = (torch.nn.functional.normalize(torch.randn(6, 5, generator=g, dtype=torch.float64), dim=1) for _ in range(2))
    queue = torch.nn.functional.normalize(torch.randn(9, 5, generator=g, dtype=torch.float64), dim=1)
    got = ssl.info_nce(q, k, queue, 0.2).item()
    assert got == pytest.approx(np_info_nce(_np(q), _np(k), _np(queue), 0.2), rel=1e-12)


def test_barlow_twins_loss_matches_numpy() -> None:
    g = torch.Generator().manual_seed(1)
    z1, z2 = (torch.randn(7, 4, generator=g, dtype=torch.float64) * 3 + 1 for _ in range(2))
    got = ssl.barlow_twins_loss(z1, z2, lambd=5e-3).item()
    assert got == pytest.approx(np_barlow_twins(_np(z1), _np(z2), 5e-3), rel=1e-12)
    # perfectly correlated, decorrelated dimensions: invariance term only from eps, ~0
    z = torch.randn(256, 3, generator=g, dtype=torch.float64)
    assert ssl.barlow_twins_loss(z, z, 5e-3).item() < 0.2
    with pytest.raises(ValueError, match="at least 2"):
        ssl.barlow_twins_loss(z[:1], z[:1])


def test_simsiam_loss_matches_numpy_and_stops_gradient() -> None:
    g = torch.Generator().manual_seed(2)
    p1, p2, z1, z2 = (torch.randn(5, 6, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(4))
    loss = ssl.simsiam_loss(p1, p2, z1, z2)
    assert loss.item() == pytest.approx(np_simsiam(_np(p1), _np(p2), _np(z1), _np(z2)), rel=1e-12)
    loss.backward()
    assert z1.grad is None and z2.grad is None and p1.grad is not None


def test_nt_xent_matches_numpy() -> None:
    g = torch.Generator().manual_seed(3)
    z1, z2 = (torch.randn(5, 4, generator=g, dtype=torch.float64) for _ in range(2))
    got = ssl.nt_xent(z1, z2, 0.5).item()
    assert got == pytest.approx(np_nt_xent(_np(z1), _np(z2), 0.5), rel=1e-12)


def test_rotation_loss_matches_numpy() -> None:
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(12, 4, generator=g, dtype=torch.float64)
    labels = torch.arange(4).repeat_interleave(3)
    got = ssl.rotation_loss(logits, labels).item()
    assert got == pytest.approx(np_cross_entropy(_np(logits), labels.numpy()), rel=1e-12)


# ----------------------------------------------------------------------------- full methods


def _learner(method: str, c: int = 1, s: int = 8, **opts) -> JointLearner:
    torch.manual_seed(0)
    return JointLearner(LearnerSpec("small_cnn", 10, c, s, (0.3,) * c, (0.4,) * c, ssl=method,
                                    ssl_options={"flip": False, **opts}))


def _views(b: int = 8, c: int = 1, s: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return torch.rand(b, c, s, s, generator=g), torch.rand(b, c, s, s, generator=g)


def test_moby_loss_wiring_and_queues() -> None:
    """loss = InfoNCE(pred(q1), k2, queue2) + InfoNCE(pred(q2), k1, queue1) at T=0.2; keys enqueued per view."""
    m = _learner("moby", queue_size=16, proj_dim=8)
    s = m.ssl
    v1, v2 = _views()
    queue1, queue2 = _np(s.queue1.keys), _np(s.queue2.keys)
    enc, proj, pred = m.encoder, s.projector, s.predictor
    with torch.no_grad():  # raw module outputs; normalisation and loss done in numpy
        q1, q2 = (_np(pred(proj(enc(v)))) for v in (v1, v2))
        k1, k2 = (_np(s.projector_k(s.encoder_k(v))) for v in (v1, v2))
    q1, q2, k1, k2 = map(np_normalize, (q1, q2, k1, k2))
    expected = np_info_nce(q1, k2, queue2, 0.2) + np_info_nce(q2, k1, queue1, 0.2)
    got = s.loss(None, views=(v1, v2))
    assert got.item() == pytest.approx(expected, rel=1e-5)
    np.testing.assert_allclose(_np(s.queue1.keys)[:8], k1, atol=1e-6)
    np.testing.assert_allclose(_np(s.queue2.keys)[:8], k2, atol=1e-6)
    np.testing.assert_array_equal(_np(s.queue1.keys)[8:], queue1[8:])
    assert int(s.queue1.ptr) == 8 and int(s.queue2.ptr) == 8


def test_mocov2_loss_matches_numpy() -> None:
    m = _learner("mocov2", queue_size=16)
    s = m.ssl
    v1, v2 = _views()
    queue = _np(s.queue.keys)
    with torch.no_grad():
        q = np_normalize(_np(s.head(m.encoder(v1))))
        k = np_normalize(_np(s.head_k(s.encoder_k(v2))))
    assert s.loss(None, views=(v1, v2)).item() == pytest.approx(np_info_nce(q, k, queue, 0.2), rel=1e-5)
    np.testing.assert_allclose(_np(s.queue.keys)[:8], k, atol=1e-6)


def test_barlow_twins_method_matches_numpy() -> None:
    m = _learner("barlow_twins", proj_dim=16)
    s = m.ssl
    v1, v2 = _views(b=12)
    with torch.no_grad():
        z1, z2 = _np(s.projector(m.encoder(v1))), _np(s.projector(m.encoder(v2)))
    assert s.loss(None, views=(v1, v2)).item() == pytest.approx(np_barlow_twins(z1, z2, 5e-3), rel=1e-4)


def test_simsiam_method_matches_numpy() -> None:
    m = _learner("simsiam", proj_dim=16, pred_dim=4)
    s = m.ssl
    v1, v2 = _views()
    with torch.no_grad():
        z1, z2 = s.projector(m.encoder(v1)), s.projector(m.encoder(v2))
        p1, p2 = s.predictor(z1), s.predictor(z2)
    expected = np_simsiam(_np(p1), _np(p2), _np(z1), _np(z2))
    assert s.loss(None, views=(v1, v2)).item() == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_simclr_method_matches_numpy() -> None:
    m = _learner("simclr")
    s = m.ssl
    v1, v2 = _views()
    with torch.no_grad():
        z1, z2 = _np(s.head(m.encoder(v1))), _np(s.head(m.encoder(v2)))
    assert s.loss(None, views=(v1, v2)).item() == pytest.approx(np_nt_xent(z1, z2, 0.5), rel=1e-5)


def test_rotnet_method_matches_numpy() -> None:
    m = _learner("rotnet")
    s = m.ssl
    x = _views()[0]
    xr, labels = s.make_views(x)
    with torch.no_grad():
        logits = _np(s.head(m.encoder(xr)))
    expected = np_cross_entropy(logits, labels.numpy())
    assert s.loss(x).item() == pytest.approx(expected, rel=1e-5)


# ----------------------------------------------------------------------------- EMA and queues


def test_cosine_momentum_schedule() -> None:
    assert ssl.cosine_momentum(0.99, 0.0) == pytest.approx(0.99, abs=1e-15)
    assert ssl.cosine_momentum(0.99, 0.5) == pytest.approx(0.995, abs=1e-15)
    assert ssl.cosine_momentum(0.99, 1.0) == pytest.approx(1.0, abs=1e-15)
    vals = [ssl.cosine_momentum(0.99, p) for p in np.linspace(0, 1, 11)]
    assert all(a < b for a, b in zip(vals, vals[1:]))
    for p in (0.1, 0.3, 0.8):
        assert ssl.cosine_momentum(0.99, p) == pytest.approx(1 - 0.01 * (math.cos(math.pi * p) + 1) / 2, abs=1e-15)


def test_moby_key_branch_starts_as_copy_and_follows_ema() -> None:
    m = _learner("moby", queue_size=16, proj_dim=8)
    s = m.ssl
    for a, b in zip(m.encoder.parameters(), s.encoder_k.parameters()):
        assert torch.equal(a, b) and not b.requires_grad
    with torch.no_grad():  # move the query branch so the EMA has something to do
        for p in list(m.encoder.parameters()) + list(s.projector.parameters()):
            p.add_(torch.randn_like(p))
    before_k = [p.clone() for p in list(s.encoder_k.parameters()) + list(s.projector_k.parameters())]
    query = [p.clone() for p in list(m.encoder.parameters()) + list(s.projector.parameters())]
    m.on_train_step_end(0.25)
    mom = 1 - (1 - 0.99) * (math.cos(math.pi * 0.25) + 1) / 2
    for k0, q, k1 in zip(before_k, query, list(s.encoder_k.parameters()) + list(s.projector_k.parameters())):
        torch.testing.assert_close(k1, mom * k0 + (1 - mom) * q)
    assert float(s.momentum) == pytest.approx(mom)
    assert int(s.steps) == 1


def test_moby_alternates_weak_and_strong_views() -> None:
    """Even steps: view 1 weak (a padded crop of x), odd steps: view 2 is the weak one."""
    m = _learner("moby", queue_size=16, proj_dim=8, augment={"pad": 0})
    x = _views()[0]
    v1, v2 = m.ssl.make_views(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(v1, x) and not torch.equal(v2, x)  # pad 0 and no flip: weak is the identity
    m.on_train_step_end(0.1)
    v1, v2 = m.ssl.make_views(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(v2, x) and not torch.equal(v1, x)


def test_key_queue_is_a_fifo_ring() -> None:
    q = ssl.KeyQueue(8, 2)
    ref = q.keys.numpy().copy()
    ptr = 0
    rng = np.random.default_rng(0)
    for n in (3, 5, 4, 7, 11):
        k = rng.normal(size=(n, 2)).astype(np.float32)
        q.enqueue(torch.from_numpy(k))
        if n >= 8:
            ref, ptr = k[-8:].copy(), 0
        else:
            for row in k:  # plain ring buffer, one key at a time
                ref[ptr] = row
                ptr = (ptr + 1) % 8
        np.testing.assert_array_equal(q.keys.numpy(), ref)
        assert int(q.ptr) == ptr


def test_gather_helpers_with_world_size_one(tmp_path: Path) -> None:
    assert ssl.concat_all_gather(torch.ones(2)) is not None
    if dist.is_initialized():
        pytest.fail("a process group is already initialised in this test process")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        x = torch.randn(4, 3, requires_grad=True)
        torch.testing.assert_close(ssl.concat_all_gather(x), x.detach())
        y = ssl.gather_with_local_grad(x)
        assert y.requires_grad and torch.equal(y, x)
        loss = ssl.exact_global_loss((y ** 2).sum())
        loss.backward()
        torch.testing.assert_close(x.grad, 2 * x.detach())
        m = _learner("moby", queue_size=16, proj_dim=8)
        m.ssl.loss(None, views=_views())
        assert int(m.ssl.queue1.ptr) == 8
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- 2 processes x b == 1 x 2b

_DDP_SCRIPT = textwrap.dedent(
    '''
    import sys
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel as DDP
    from ray_al.models import JointLearner, LearnerSpec, convert_sync_batchnorm
    from ray_al.ssl import concat_all_gather

    METHODS = ["none", "moby", "barlow_twins", "simclr"]
    B = 12  # global batch

    def make(method):
        torch.manual_seed(0)
        opts = None if method == "none" else {"flip": False}
        if method in ("moby", "mocov2"):
            opts["queue_size"] = 32
        if method == "barlow_twins":
            opts.update(proj_dim=32, scale=1 / 32)
        return JointLearner(LearnerSpec("small_cnn", 10, 1, 8, (0.3,), (0.4,), ssl=method, ssl_options=opts))

    def data():
        g = torch.Generator().manual_seed(1)
        return torch.rand(B, 1, 8, 8, generator=g), torch.randint(0, 10, (B,), generator=g), torch.arange(B)

    def train(model, forward, x, y, seeds, steps=2):
        opt = torch.optim.SGD(model.trainable_parameters(), lr=0.05, momentum=0.9)
        for t in range(steps):
            logits, _ = forward(x)
            loss = F.cross_entropy(logits, y) + model.ssl_loss(x, seeds=seeds + 1000 * t)
            opt.zero_grad()
            loss.backward()
            opt.step()
            model.on_train_step_end((t + 1) / steps)
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    def worker(rank, world, init, out):
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
        gathered = concat_all_gather(torch.full((rank + 1, 2), float(rank)))  # unequal sizes
        x, y, seeds = data()
        b = B // world
        part = slice(rank * b, (rank + 1) * b)
        states = {}
        for method in METHODS:
            model = convert_sync_batchnorm(make(method))
            states[method] = train(model, DDP(model), x[part], y[part], seeds[part])
        if rank == 0:
            torch.save({"states": states, "gathered": gathered}, out)
        dist.destroy_process_group()

    if __name__ == "__main__":
        worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
    '''
)


def test_two_processes_with_b_equal_one_process_with_2b(tmp_path: Path) -> None:
    """DDP (gloo, CPU) + global BN + seeded per-sample views: 2 ranks x 6 samples give the same
    parameters, BN statistics and queues as one process with 12, after 2 SGD steps."""
    script = tmp_path / "ddp_worker.py"
    script.write_text(_DDP_SCRIPT)
    init, out = f"file://{tmp_path / 'store'}", str(tmp_path / "out.pt")
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen([sys.executable, "-W", "ignore", str(script), str(r), "2", init, out], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for r in range(2)
    ]
    logs = [p.communicate(timeout=240)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)[-4000:]
    result = torch.load(out)
    assert result["gathered"].tolist() == [[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]  # rank order, unequal sizes

    spec = importlib.util.spec_from_file_location("ddp_worker", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    x, y, seeds = mod.data()
    for method in mod.METHODS:
        model = mod.make(method)
        ref = mod.train(model, model, x, y, seeds)
        got = result["states"][method]
        assert ref.keys() == got.keys()
        for key, want in ref.items():
            if want.is_floating_point():
                torch.testing.assert_close(got[key], want, rtol=1e-4, atol=2e-5, msg=lambda m: f"{method} {key}: {m}")
            else:
                assert torch.equal(got[key], want), f"{method} {key}"


# ----------------------------------------------------------------------------- toy training


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    from sklearn.datasets import load_digits

    return torch.tensor(load_digits().images / 16.0, dtype=torch.float32)[:, None]  # (1797, 1, 8, 8) in [0, 1]


TOY = {
    "moby": {"queue_size": 128},
    "mocov2": {"queue_size": 128, "momentum": 0.99},
    "barlow_twins": {"proj_dim": 128},
    "simsiam": {"proj_dim": 128, "pred_dim": 32},
    "simclr": {},
    "rotnet": {},
}


@pytest.mark.parametrize("method", sorted(TOY))
def test_ssl_loss_decreases_on_digits(method: str, digits: torch.Tensor) -> None:
    model = _learner(method, **TOY[method])
    opt = torch.optim.Adam(model.trainable_parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    steps, losses = 60, []
    for step in range(steps):
        idx = torch.randint(0, len(digits), (64,), generator=g)
        loss = model.ssl_loss(digits[idx], generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.on_train_step_end((step + 1) / steps)
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    early, late = float(np.mean(losses[5:15])), float(np.mean(losses[-10:]))  # after the queues fill
    assert late < early - 0.03 * (abs(early) + 1.0), f"{method}: {early:.3f} -> {late:.3f}"


# ----------------------------------------------------------------------------- registry


def test_build_validates_names_and_options() -> None:
    enc = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16))
    with pytest.raises(ValueError, match="valid: none, .*moby.*Set train.method"):
        ssl.build("byol", enc, 16, 8, 1)
    with pytest.raises(ValueError, match="valid options: .*queue_size"):
        ssl.build("moby", enc, 16, 8, 1, queue=10)
    assert sorted(ssl.METHODS) == ["barlow_twins", "moby", "mocov2", "rotnet", "simclr", "simsiam"]
    m = ssl.build("simclr", enc, 16, 8, 1, temperature=0.1)
    assert m.temperature == 0.1 and m.encoder is enc
    assert not any(k.startswith("encoder.") for k in m.state_dict())  # the encoder belongs to its owner
