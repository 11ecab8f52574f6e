"""The README's walkthrough, "an S3 bucket of unlabeled photos to a first batch in Label Studio, then the next
round", followed in order with its own commands: the bucket is moto's server on loopback (tests/s3server.py),
the photos are CIFAR-10 cats, dogs and birds of mixed sizes, formats and aspects in one flat prefix, and the
annotators are this test, which answers Label Studio's tasks with each image's true class in Label Studio's
export format (the real Label Studio round trip is `make test-labelstudio`, tests/test_labelstudio.py).
The encoder is the packaged ImageNet EfficientNet-Lite0 (model.weights=imagenet), frozen, at its own 224 px."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from ray_al.core import storage
from ray_al.run.ledger import Ledger
from ray_al.run.rundir import RunDir
from tests.conftest import CIFAR10, REPO
from tests.rayhead import shared_env
from tests.test_labelstudio import choice

CLASSES = ("cat", "dog", "bird")
PER_CLASS = 8
FIRST = 6  # al.initial_size = al.budget: the README's 50, scaled to the pool


def _photos() -> dict[str, tuple[bytes, str]]:
    """name -> (file bytes, true class): JPEG and PNG, upscaled to sizes and aspects a camera roll has."""
    from PIL import Image

    table = pq.read_table(CIFAR10 / "test.parquet", columns=["image", "label_name"])
    sizes = [(320, 240), (200, 300), (96, 96), (640, 360)]
    out = {}
    for name in CLASSES:
        rows = table.filter(pc.equal(table["label_name"], name)).slice(0, PER_CLASS)
        for k, data in enumerate(rows.column("image").to_pylist()):
            image = Image.open(io.BytesIO(data)).convert("RGB").resize(sizes[k % len(sizes)])
            fmt = "PNG" if k % 2 else "JPEG"
            buf = io.BytesIO()
            image.save(buf, format=fmt)
            out[f"IMG_{len(out):04d}.{fmt.lower().replace('jpeg', 'jpg')}"] = (buf.getvalue(), name)
    return out


def _run(s3, module: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **shared_env(), "RAY_AL_S3_ENDPOINT": s3.endpoint, "AWS_REGION": s3.region}
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=900, env=env)
    assert proc.returncode == 0, f"python -m {module} {' '.join(args)}\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    return proc


def _annotate(tasks: list[dict], truth: dict[str, str]) -> list[dict]:
    """What Label Studio's Export > JSON gives once an annotator has answered every task with its class."""
    return [{"id": n, "data": task["data"], "annotations": [{
        "id": 1000 + n, "completed_by": 1, "was_cancelled": False,
        "result": choice(truth[task["data"]["image"].rsplit("/", 1)[-1]])}]}
        for n, task in enumerate(tasks, 1)]


@pytest.mark.timeout(600)  # 95 s alone; a hang (a CPU held elsewhere on the head) fails fast
def test_the_s3_to_label_studio_walkthrough_in_order(s3, tmp_path):
    photos = _photos()
    root = s3.uri(f"walkthrough-{uuid.uuid4().hex[:8]}")
    for name, (data, _) in photos.items():
        storage.write_bytes_atomic(f"{root}/photos/{name}", data)
    truth = {name: label for name, (_, label) in photos.items()}

    # 1. the pool: every image unlabeled, the annotators' classes
    _run(s3, "ray_al.data", "ingest", f"{root}/photos/", f"{root}/pool/", "--classes", ",".join(CLASSES))
    pool = storage.read_parquet(f"{root}/pool/")
    assert pool.num_rows == len(photos) and pool.column("label").null_count == len(photos)

    # 2. the first batch among all images, on the pretrained encoder's features; the cycle waits for labels
    run = f"{root}/runs/first"
    first = _run(s3, "ray_al.cycle", "data.dataset=parquet", f"data.pool={root}/pool/",
                 f"data.classes=[{','.join(CLASSES)}]", "model.backbone=efficientnet_lite0", "model.weights=imagenet",
                 "train.mode=frozen", "train.epochs=5", "al.initial=typiclust",
                 f"al.initial_size={FIRST}", f"al.budget={FIRST}", "al.rounds=1", "al.oracle=file", f"run.dir={run}")
    assert f"the seed set: {FIRST} images await labels" in first.stdout
    assert len(Ledger.load(run)) == 0

    # 3. the batch as Label Studio tasks: s3:// image URIs, one per picked image, the labelling config beside
    tasks_file = tmp_path / "tasks.json"
    _run(s3, "ray_al.label", "export", run, "--format", "label-studio", "--out", str(tasks_file))
    tasks = json.loads(tasks_file.read_text())
    images = [t["data"]["image"] for t in tasks]
    assert len(images) == FIRST and all(u.startswith(f"{root}/photos/") for u in images)
    assert all(f'Choice value="{c}"' in (tmp_path / "tasks.label_config.xml").read_text() for c in CLASSES)

    # 4. the answers into the ledger, then round 0: train the head, pick the next batch, wait again
    export = tmp_path / "project-1-export.json"
    export.write_text(json.dumps(_annotate(tasks, truth)))
    _run(s3, "ray_al.label", "import", run, str(export))
    labels = Ledger.load(run).labels_by_id()
    assert {i.rsplit("/", 1)[-1]: CLASSES[y] for i, y in labels.items()} == \
        {u.rsplit("/", 1)[-1]: truth[u.rsplit("/", 1)[-1]] for u in images}
    resumed = _run(s3, "ray_al.cycle", "--resume", run)
    assert f"round 0: {FIRST} images await labels" in resumed.stdout
    assert storage.exists(f"{run}/rounds/0000/model.pt")  # round 0's head, trained on the imported labels
    second = RunDir.open(run).read_queries(0).column("id").to_pylist()
    assert len(second) == FIRST and not set(second) & set(labels)
    status = _run(s3, "ray_al.label", "status", run)
    assert f"labels     {FIRST} " in status.stdout and "pending    no query batch awaiting labels" not in status.stdout

    # 3-4 again: round 0's batch through Label Studio's format, then the last round (al.rounds=1)
    _run(s3, "ray_al.label", "export", run, "--format", "label-studio", "--out", str(tasks_file))
    tasks = json.loads(tasks_file.read_text())
    assert sorted(t["data"]["ray_al_id"] for t in tasks) == sorted(second)
    assert all("predictions" in t for t in tasks)  # round 0's model proposes a class for each
    export.write_text(json.dumps(_annotate(tasks, truth)))
    _run(s3, "ray_al.label", "import", run, str(export))
    last = _run(s3, "ray_al.cycle", "--resume", run)
    rows = [json.loads(line) for line in storage.read_text(f"{run}/results.jsonl").splitlines()]
    assert [(r["round"], r["labels"], r["accuracy"]) for r in rows] == [(0, FIRST, None), (1, 2 * FIRST, None)]
    assert "no test split (data.test): rounds report no accuracy and no learning curve" in last.stdout
