"""Pool contract checks, decoding, built-in datasets, and ingest of a real image folder (local and S3)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ray_al.core import storage
from ray_al.core.config import DataConfig
from ray_al.data import builtin
from ray_al.data.images import CorruptImageError, decode_batch, decode_one
from ray_al.data.ingest import folder_table, ingest, list_image_folder, read_classes
from ray_al.data.pool import PoolError, check_pool, prepare


def _cifar_rows(cifar_parquet, n=40):
    return pq.read_table(cifar_parquet / "test.parquet").slice(0, n)


def _image_folder(root, table):
    for row in table.to_pylist():
        d = root / row["label_name"]
        d.mkdir(parents=True, exist_ok=True)
        (d / row["path"].rsplit("/", 1)[-1]).write_bytes(row["image"])
    return root


def test_digits_builtin_is_a_valid_pool(tmp_path):
    pool, test, names = builtin.digits(seed=0)
    assert pool.num_rows + test.num_rows == 1797 and len(names) == 10
    assert set(pool.column("id").to_pylist()).isdisjoint(test.column("id").to_pylist())
    img = decode_one(pool.column("image")[0].as_py(), 8, 1)
    assert img.shape == (8, 8, 1) and img.dtype == np.uint8 and img.max() > 100


def test_prepare_cifar10_subsample(tmp_path, cifar_parquet):
    spec = prepare(DataConfig(dataset="cifar10", pool=str(cifar_parquet), pool_size=300, test_size=100),
                   str(tmp_path / "run"), seed=3)
    assert (spec.pool_rows, spec.num_classes, spec.image_size, spec.channels) == (300, 10, 32, 3)
    assert spec.class_names[0] == "airplane" and spec.has_labels
    ids = pq.read_table(spec.pool_uri).column("id").to_pylist()
    assert len(set(ids)) == 300


def test_prepare_user_parquet_infers_shape_stats_and_classes(tmp_path, cifar_parquet):
    rows = _cifar_rows(cifar_parquet, 30)
    pool, test, bad_test = tmp_path / "pool.parquet", tmp_path / "test.parquet", tmp_path / "unlabeled.parquet"
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(20)], "image": rows.column("image").slice(0, 20)}), pool)
    test_rows = rows.slice(20, 10)
    pq.write_table(pa.table({"id": list(range(10)), "image": test_rows.column("image"),
                             "label": test_rows.column("label")}), test)
    spec = prepare(DataConfig(dataset="parquet", pool=str(pool), test=str(test)), str(tmp_path / "run"), seed=0)
    assert (spec.pool_uri, spec.test_uri) == (str(pool), str(test))  # used in place
    assert (spec.image_size, spec.channels, spec.id_type, spec.pool_rows) == (32, 3, "string", 20)
    assert not spec.has_labels
    n = max(test_rows.column("label").to_pylist()) + 1  # no class list: the test labels say how many
    assert spec.num_classes == n and spec.class_names == tuple(str(i) for i in range(n))
    assert len(spec.mean) == len(spec.std) == 3 and all(0 < m < 1 for m in spec.mean)
    pq.write_table(pa.table({"id": [1], "image": test_rows.column("image").slice(0, 1)}), bad_test)
    with pytest.raises(PoolError, match="has no `label` column"):
        prepare(DataConfig(dataset="parquet", pool=str(pool), test=str(bad_test)), str(tmp_path / "run"), seed=0)
    with pytest.raises(PoolError, match=r"no labels to count the classes from: name them with data.classes"):
        prepare(DataConfig(dataset="parquet", pool=str(pool)), str(tmp_path / "run"), seed=0)
    spec = prepare(DataConfig(dataset="parquet", pool=str(pool), classes=("cat", "dog")), str(tmp_path / "run"), 0)
    assert spec.test_uri == "" and (spec.num_classes, spec.class_names) == (2, ("cat", "dog"))  # no test split
    with pytest.raises(PoolError, match="data.num_classes=3 but 2 class names"):
        prepare(DataConfig(dataset="parquet", pool=str(pool), classes=("cat", "dog"), num_classes=3),
                str(tmp_path / "run"), 0)


def test_prepare_folder_ingests_once_into_the_run(tmp_path, cifar_parquet, ray_local):
    rows = _cifar_rows(cifar_parquet, 30)
    src = _image_folder(tmp_path / "train", rows.slice(0, 20))
    test_src = _image_folder(tmp_path / "test", rows.slice(20))
    cfg = DataConfig(dataset="folder", pool=str(src), test=str(test_src))
    spec = prepare(cfg, str(tmp_path / "run"), seed=0)
    assert spec.pool_uri == storage.join(str(tmp_path / "run"), "data", "pool") and spec.pool_rows == 20
    assert spec.class_names == tuple(read_classes(spec.pool_uri)) and spec.num_classes == len(spec.class_names)
    assert spec.id_type == "string" and (spec.image_size, spec.channels) == (32, 3)
    again = prepare(cfg, str(tmp_path / "run"), seed=0)  # a resumed run: no second ingest (it would refuse)
    assert again == spec


def test_pool_without_id_is_refused(tmp_path):
    path = tmp_path / "pool.parquet"
    pq.write_table(pa.table({"image": [b"x"], "label": [1]}), path)
    with pytest.raises(PoolError, match=r"no `id` column.*columns: image, label"):
        check_pool(str(path))


def test_empty_pool_is_refused(tmp_path):
    path = tmp_path / "pool.parquet"
    pq.write_table(pa.table({"id": pa.array([], pa.int64()), "image": pa.array([], pa.binary())}), path)
    with pytest.raises(PoolError, match="has no rows"):
        check_pool(str(path))


def test_duplicate_ids_are_refused_and_named(tmp_path):
    path = tmp_path / "pool.parquet"
    pq.write_table(pa.table({"id": [1, 2, 2, 3, 3], "image": [b"x"] * 5}), path)
    with pytest.raises(PoolError, match=r"2 duplicate ids \(e.g. 2, 3\)"):
        check_pool(str(path))


def test_missing_pool_path_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        prepare(DataConfig(dataset="parquet", pool=str(tmp_path / "nope.parquet"), test=str(tmp_path / "t")),
                str(tmp_path / "run"), seed=0)
    with pytest.raises(FileNotFoundError, match="CIFAR-10 train split not found"):
        prepare(DataConfig(dataset="cifar10", pool=str(tmp_path / "empty")), str(tmp_path / "run2"), seed=0)


def test_corrupt_image_is_reported_by_id_or_raises(cifar_parquet):
    rows = _cifar_rows(cifar_parquet, 3)
    images = rows.column("image").to_pylist()
    batch = {"id": np.array([10, 11, 12]), "image": np.array([images[0], b"not a jpeg", images[2]], dtype=object)}
    out = decode_batch(dict(batch), 32, 3, "skip")
    assert out["corrupt"].tolist() == [False, True, False] and out["pixels"].shape == (3, 32, 32, 3)
    with pytest.raises(CorruptImageError, match="id=11"):
        decode_batch(dict(batch), 32, 3, "error")


def test_list_image_folder_refuses_missing_and_images_beside_class_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        list_image_folder(str(tmp_path / "none"))
    (tmp_path / "flat" / "cat").mkdir(parents=True)
    (tmp_path / "flat" / "a.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="directly in the root"):
        list_image_folder(str(tmp_path / "flat"), unlabeled=False)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="holds no images"):
        list_image_folder(str(tmp_path / "empty"), unlabeled=True)


def _mixed_images(folder) -> dict[str, tuple[int, int]]:
    """A flat folder as users have it: JPEG and PNG, several sizes and aspects, one nested folder, one
    non-image file. Returns relative path -> (width, height)."""
    from PIL import Image

    sizes = {"wide.jpg": (640, 200), "tall.png": (120, 500), "sq.JPEG": (64, 64), "2024/06/grey.png": (33, 71)}
    for rel, (w, h) in sizes.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        mode = "L" if "grey" in rel else "RGB"
        Image.new(mode, (w, h), color=128 if mode == "L" else (200, 30, 10)).save(path)
    (folder / "README.txt").write_text("not an image")
    return sizes


def test_a_flat_folder_of_mixed_images_is_an_unlabeled_pool(tmp_path):
    from PIL import Image
    import io

    sizes = _mixed_images(tmp_path / "photos")
    skipped = {}
    listing, classes = list_image_folder(str(tmp_path / "photos"), skipped, classes=("cat", "dog"))
    assert listing.column("id").to_pylist() == sorted(sizes) and classes == ["cat", "dog"]
    assert listing.column("label").null_count == len(sizes) and skipped == {"files": 1, "example": "README.txt"}
    table = folder_table(str(tmp_path / "photos"))
    assert table.column("label_name").null_count == len(sizes)
    for rel, image in zip(table.column("id").to_pylist(), table.column("image").to_pylist()):
        assert Image.open(io.BytesIO(image)).size == sizes[rel]  # bytes kept as they are: no re-encoding


def test_unlabeled_forces_sub_folders_to_be_images_not_classes(tmp_path):
    _mixed_images(tmp_path / "photos")
    (tmp_path / "photos" / "wide.jpg").rename(tmp_path / "photos" / "2024" / "wide.jpg")
    for name in ("tall.png", "sq.JPEG"):
        (tmp_path / "photos" / name).unlink()
    listing, _ = list_image_folder(str(tmp_path / "photos"))  # only sub-folders now: read as classes
    assert listing.column("label").null_count == 0
    listing, _ = list_image_folder(str(tmp_path / "photos"), unlabeled=True)
    assert listing.column("id").to_pylist() == ["2024/06/grey.png", "2024/wide.jpg"]
    assert listing.column("label").null_count == 2


def test_ingest_real_image_folder_keeps_bytes_and_labels(tmp_path, cifar_parquet, ray_local):
    rows = _cifar_rows(cifar_parquet, 40)
    src = _image_folder(tmp_path / "folder", rows)
    summary = ingest(str(src), str(tmp_path / "pool"))
    assert summary["images"] == 40
    table = storage.read_parquet(str(tmp_path / "pool"))
    check_pool(str(tmp_path / "pool"))
    classes = read_classes(str(tmp_path / "pool"))
    by_name = {r["path"].rsplit("/", 1)[-1]: r for r in rows.to_pylist()}
    for rec in table.to_pylist():
        original = by_name[rec["id"].split("/", 1)[1]]
        assert rec["image"] == original["image"]
        assert classes[rec["label"]] == original["label_name"] == rec["id"].split("/", 1)[0]
    with pytest.raises(FileExistsError, match="not empty"):
        ingest(str(src), str(tmp_path / "pool"))


def test_ingest_from_s3_folder(tmp_path, cifar_parquet, s3, ray_local):
    rows = _cifar_rows(cifar_parquet, 12)
    for row in rows.to_pylist():
        storage.write_bytes_atomic(s3.uri("imgs", row["label_name"], row["path"].rsplit("/", 1)[-1]), row["image"])
    ingest(s3.uri("imgs"), s3.uri("pool"))
    table = storage.read_parquet(s3.uri("pool"))
    assert table.num_rows == 12 and set(table.column("image").to_pylist()) == set(rows.column("image").to_pylist())
    with pytest.raises(FileNotFoundError):
        ingest(s3.uri("no-such-prefix"), str(tmp_path / "p"))


def test_ingest_an_unlabeled_s3_prefix_with_the_annotators_classes(tmp_path, s3, ray_local):
    sizes = _mixed_images(tmp_path / "photos")
    for rel in [*sizes, "README.txt"]:
        storage.write_bytes_atomic(s3.uri("unlabeled", rel), (tmp_path / "photos" / rel).read_bytes())
    summary = ingest(s3.uri("unlabeled"), s3.uri("upool"), classes=("cat", "dog", "bird"))
    assert summary["labeled"] is False and summary["skipped_files"] == 1
    table = storage.read_parquet(s3.uri("upool"))
    assert sorted(table.column("id").to_pylist()) == sorted(sizes) and table.column("label").null_count == 4
    assert read_classes(s3.uri("upool")) == ["cat", "dog", "bird"]
    check_pool(s3.uri("upool"))  # null labels are the contract's "unknown"


def test_ingest_cli(tmp_path, cifar_parquet):
    import subprocess
    import sys

    src = _image_folder(tmp_path / "folder", _cifar_rows(cifar_parquet, 10))
    first_class = sorted(p.name for p in src.iterdir())[0]
    (src / first_class / "notes.txt").write_text("not an image")
    proc = subprocess.run([sys.executable, "-m", "ray_al.data", "ingest", str(src), str(tmp_path / "pool")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ingested 10 labeled images" in proc.stdout and storage.read_parquet(str(tmp_path / "pool")).num_rows == 10
    assert "images/s)" in proc.stdout  # throughput
    assert "skipped 1 files that are not images" in proc.stdout and f"e.g. {first_class}/notes.txt" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "ray_al.data", "ingest", str(tmp_path / "missing"),
                          str(tmp_path / "p2")], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "not found" in bad.stderr


def test_truncated_wrong_mode_and_wrong_size_images():
    """Truncated or empty bytes are corrupt (reported by id, zero pixels); another mode (grey, RGBA) is
    converted and another size resized to the pool's, so one odd file does not stop a round."""
    import io

    from PIL import Image

    def encoded(img, fmt="PNG"):
        buf = io.BytesIO()
        img.save(buf, format=fmt)
        return buf.getvalue()

    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    jpeg = encoded(rgb, "JPEG")
    images = [encoded(rgb), jpeg[: len(jpeg) // 2], b"", encoded(rgb.convert("L")), encoded(rgb.convert("RGBA")),
              encoded(rgb.resize((64, 48)))]
    out = decode_batch({"id": np.arange(10, 16), "image": np.array(images, dtype=object)}, 32, 3, "skip")
    assert out["corrupt"].tolist() == [False, True, True, False, False, False]
    assert out["pixels"].shape == (6, 32, 32, 3) and not out["pixels"][[1, 2]].any()
    grey = np.asarray(rgb.convert("L"))
    assert np.array_equal(out["pixels"][3], np.repeat(grey[:, :, None], 3, axis=2))  # grey -> RGB, same values
    assert np.array_equal(out["pixels"][4], np.asarray(rgb))  # RGBA -> RGB drops alpha
    with pytest.raises(CorruptImageError, match=r"\b11\b"):
        decode_batch({"id": np.arange(10, 12), "image": np.array(images[:2], dtype=object)}, 32, 3, "error")


def test_path_uris_that_point_nowhere_are_reported_by_id_and_path():
    batch = {"id": np.arange(7, 9), "path": np.array(["/nonexistent/a.png", "/nonexistent/b.png"], dtype=object)}
    assert decode_batch(dict(batch), 8, 1, "skip", read_uri=storage.read_bytes)["corrupt"].tolist() == [True, True]
    with pytest.raises(CorruptImageError, match=r"id=7.*/nonexistent/a.png not found.*data.on_corrupt=skip"):
        decode_batch(dict(batch), 8, 1, "error", read_uri=storage.read_bytes)


def test_builtin_digits_are_scikit_learns_digits_read_without_importing_its_datasets():
    from sklearn.datasets import load_digits

    from ray_al.data.builtin import digits_pixels

    pixels, labels = digits_pixels()
    bunch = load_digits()
    assert pixels.dtype == np.uint8 and pixels.shape == (1797, 8, 8) and labels.tolist() == bunch.target.tolist()
    assert np.array_equal(pixels, np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8))
