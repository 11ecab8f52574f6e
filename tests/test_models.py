"""Backbones, the joint learner, global batch norm, and the no-ray rule for pure modules."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from ray_al.models import (
    BACKBONES,
    GlobalBatchNorm,
    JointLearner,
    LearnerSpec,
    build_backbone,
    convert_sync_batchnorm,
)
from ray_al.ssl import METHODS

FEATURE_DIMS = {"resnet18": 512, "vgg16_bn": 512, "lenet": 84, "wrn28_2": 128, "small_cnn": 128,
                "efficientnet_lite0": 1280}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_backbone_table_is_complete() -> None:
    assert sorted(BACKBONES) == sorted(FEATURE_DIMS)


@pytest.mark.parametrize("name", sorted(FEATURE_DIMS))
@pytest.mark.parametrize("c,s", [(1, 8), (3, 32), (1, 28)])
def test_backbone_output_shape(name: str, c: int, s: int) -> None:
    net = build_backbone(name, c, s)
    assert net.feature_dim == FEATURE_DIMS[name]
    y = net(torch.rand(2, c, s, s))  # train mode: BN on a batch of 2
    assert y.shape == (2, FEATURE_DIMS[name]) and torch.isfinite(y).all()


def test_unknown_backbone_lists_valid_names() -> None:
    with pytest.raises(ValueError, match=r"unknown backbone 'resnet50'; valid: torchvision:<name>, timm:<name>, package\.module:callable, "
                       r"efficientnet_lite0, lenet, resnet18, small_cnn, vgg16_bn, wrn28_2\. Set model\.backbone"):
        build_backbone("resnet50", 3, 32)


def test_vgg_keeps_pools_that_fit() -> None:
    pools = lambda s: sum(isinstance(m, nn.MaxPool2d) for m in build_backbone("vgg16_bn", 1, s).modules())  # noqa: E731
    assert (pools(32), pools(28), pools(8)) == (5, 4, 3)


def _learner(ssl: str = "none", c: int = 3, s: int = 32, **kw) -> JointLearner:
    torch.manual_seed(0)
    opts = {"flip": c == 3, **kw.pop("ssl_options", {})} if ssl != "none" else None
    return JointLearner(LearnerSpec("small_cnn", 10, c, s, (0.4,) * c, (0.2,) * c, ssl=ssl, ssl_options=opts, **kw))


def test_forward_shapes_and_normalisation_first() -> None:
    m = _learner().eval()
    x = torch.rand(4, 3, 32, 32)
    logits, feats = m(x)
    assert logits.shape == (4, 10) and feats.shape == (4, m.feature_dim) == (4, 128)
    torch.testing.assert_close(feats, m.encoder[1]((x - 0.4) / 0.2))
    torch.testing.assert_close(logits, feats @ m.classifier.weight.t() + m.classifier.bias)
    assert isinstance(m.classifier, nn.Linear)


def test_mean_std_validation() -> None:
    with pytest.raises(ValueError, match="one value per channel"):
        JointLearner(LearnerSpec("small_cnn", 10, 3, 32, (0.5, 0.5), (0.2, 0.2, 0.2)))
    with pytest.raises(ValueError, match="positive"):
        JointLearner(LearnerSpec("small_cnn", 10, 1, 8, (0.5,), (0.0,)))
    with pytest.raises(ValueError, match="unknown SSL method 'byol'; valid: none, barlow_twins"):
        JointLearner(LearnerSpec("small_cnn", 10, 1, 8, (0.5,), (0.2,), ssl="byol"))


def test_no_ssl_gives_zero_loss() -> None:
    m = _learner()
    loss = m.ssl_loss(torch.rand(2, 3, 32, 32))
    assert loss.shape == () and float(loss) == 0.0
    m.on_train_step_end(0.5)  # no-op


@pytest.mark.parametrize("c,s", [(1, 8), (3, 32)])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_ssl_method_trains_the_shared_encoder(method: str, c: int, s: int) -> None:
    extra = {"queue_size": 32} if method in ("moby", "mocov2") else {}
    m = _learner(method, c, s, ssl_options=extra)
    loss = m.ssl_loss(torch.rand(8, c, s, s), generator=torch.Generator().manual_seed(0))
    assert loss.shape == () and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in m.encoder.parameters())
    head = [p for n, p in m.ssl.named_parameters() if p.requires_grad]
    assert head and all(p.grad is not None for p in head)
    frozen = [p for p in m.parameters() if not p.requires_grad]
    assert all(p.grad is None for p in frozen)  # momentum branches take no gradient
    m.on_train_step_end(0.5)


def test_state_dict_holds_the_encoder_once() -> None:
    m = _learner("moby", ssl_options={"queue_size": 32})
    keys = list(m.state_dict())
    assert not any(k.startswith("ssl.encoder.") for k in keys)
    assert any(k.startswith("ssl.encoder_k.") for k in keys) and "ssl.queue1.keys" in keys
    assert len({id(p) for p in m.parameters()}) == len(list(m.parameters()))
    trainable = {id(p) for p in m.trainable_parameters()}
    assert not any(id(p) in trainable for p in m.ssl.encoder_k.parameters())


def test_global_batchnorm_without_process_group_is_batchnorm() -> None:
    torch.manual_seed(0)
    bn, gbn = nn.BatchNorm2d(4), GlobalBatchNorm(4)
    gbn.load_state_dict(bn.state_dict())
    x = torch.randn(5, 4, 3, 3) * 2 + 1
    torch.testing.assert_close(gbn(x), bn(x))
    torch.testing.assert_close(gbn.running_var, bn.running_var)
    with pytest.raises(ValueError, match="2D"):
        gbn(torch.randn(4))


def test_convert_sync_batchnorm_replaces_every_bn_and_keeps_state() -> None:
    m = _learner("moby", ssl_options={"queue_size": 32})
    x = torch.rand(4, 3, 32, 32)
    m(x)  # move running stats away from their init
    m.eval()
    before = m(x)[0]
    n_bn = sum(isinstance(mod, nn.modules.batchnorm._BatchNorm) for mod in m.modules())
    state = {k: v.clone() for k, v in m.state_dict().items()}
    out = convert_sync_batchnorm(m)
    assert out is m
    assert sum(isinstance(mod, GlobalBatchNorm) for mod in m.modules()) == n_bn
    assert all(isinstance(mod, GlobalBatchNorm) for mod in m.modules() if isinstance(mod, nn.modules.batchnorm._BatchNorm))
    assert all(isinstance(mod, GlobalBatchNorm) for mod in m.ssl.encoder.modules() if isinstance(mod, nn.modules.batchnorm._BatchNorm))
    assert m.ssl.encoder is m.encoder  # the SSL method still sees the converted encoder
    for k, v in m.state_dict().items():
        assert torch.equal(v, state[k]), k
    torch.testing.assert_close(m(x)[0], before)
    with pytest.raises(ValueError, match="valid"):
        convert_sync_batchnorm(m, backend="nccl")


def _kwargs(**over):
    kwargs = {"backbone": "small_cnn", "num_classes": 10, "in_channels": 1, "image_size": 8, "mean": (0.5,),
              "std": (0.5,), "ssl": "none", "ssl_options": {}, "dropout": 0.0}
    return {**kwargs, **over}


def test_a_checkpoint_of_another_class_count_loads_without_its_classifier():
    from ray_al.models.weights import build_learner, checkpoint_for

    five = build_learner(_kwargs(num_classes=5)).state_dict()
    state, note = checkpoint_for(five, _kwargs(), "train.checkpoint='x'")
    assert not any(k.startswith("classifier.") for k in state) and "(5 classes) is not used" in note
    learner = build_learner(_kwargs())
    learner.load_state_dict(state, strict=False)  # what the training workers do with it
    assert torch.equal(learner.state_dict()["encoder.1.features.0.weight"], five["encoder.1.features.0.weight"])
    assert checkpoint_for(build_learner(_kwargs()).state_dict(), _kwargs(), "x")[1] == ""


def test_a_checkpoint_of_another_backbone_is_refused_naming_the_tensors():
    from ray_al.models.weights import build_learner, checkpoint_for

    other = build_learner(_kwargs(backbone="lenet")).state_dict()
    with pytest.raises(ValueError, match=r"train.checkpoint='x' was written for another model.*small_cnn.*not in the checkpoint"):
        checkpoint_for(other, _kwargs(), "train.checkpoint='x'")
