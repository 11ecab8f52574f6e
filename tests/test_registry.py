"""ray_al.core.registry: the one name -> implementation idiom, and the three registries that use it."""

from __future__ import annotations

import pytest

from ray_al.core.registry import Registry, UnknownNameError


def test_registry_maps_names_in_order_and_refuses_duplicates() -> None:
    reg: Registry[int] = Registry("colour", "paint.colour")
    assert reg.add("red", 1) == 1
    reg.add("blue", 2)
    assert list(reg) == ["red", "blue"] and reg.names() == ["blue", "red"]
    assert reg["blue"] == reg.get("blue") == 2 and "red" in reg and "green" not in reg and len(reg) == 2
    assert dict(reg.items()) == {"red": 1, "blue": 2} and list(reg.values()) == [1, 2]
    with pytest.raises(ValueError, match="colour 'red' registered twice"):
        reg.add("red", 3)


def test_unknown_name_error_names_the_key_and_every_valid_name() -> None:
    reg: Registry[int] = Registry("colour", "paint.colour", extra=("none",))
    reg.add("red", 1)
    reg.add("blue", 2)
    with pytest.raises(UnknownNameError) as err:
        reg.get("green")
    assert str(err.value) == "unknown colour 'green'; valid: none, blue, red. Set paint.colour to one of them."
    assert isinstance(err.value, KeyError) and isinstance(err.value, ValueError)
    with pytest.raises(KeyError):
        reg["green"]


@pytest.mark.parametrize(
    "module, attr, kind, key",
    [
        ("ray_al.acquisition", "ACQUISITIONS", "acquisition method", "select.method"),
        ("ray_al.ssl", "METHODS", "SSL method", "train.method"),
        ("ray_al.models", "BACKBONES", "backbone", "model.backbone"),
    ],
)
def test_the_three_registries_share_the_idiom(module: str, attr: str, kind: str, key: str) -> None:
    import importlib

    reg = getattr(importlib.import_module(module), attr)
    assert isinstance(reg, Registry) and len(reg) > 0
    with pytest.raises(UnknownNameError, match=f"unknown {kind} 'nope'; valid: .*Set {key} to one of them"):
        reg.get("nope")
    name = next(iter(reg))
    assert reg.get(name) is reg[name]


def test_builders_raise_the_registry_error() -> None:
    from torch import nn

    from ray_al import acquisition, ssl
    from ray_al.models import build_backbone

    with pytest.raises(UnknownNameError, match="valid: none, barlow_twins"):
        ssl.build("byol", nn.Identity(), 16, 8, 1)
    with pytest.raises(UnknownNameError, match="valid: .*lenet, resnet18"):
        build_backbone("resnet50", 3, 32)
    with pytest.raises(UnknownNameError, match="valid: auto, badge, balanced"):
        acquisition.get("nope")
