"""Image folder (class sub-folders, local or s3://) -> pool Parquet (`id`, `image`, `label`, `label_name`, `path`).

`python -m ray_al.data ingest SRC DEST`. Files are read with Ray Data (`read_binary_files`) so a large folder
on S3 is ingested in parallel; the original encoded bytes are kept (no re-encoding). Ids are the paths
relative to SRC, which stay stable when the folder grows.
"""
from __future__ import annotations

import json
import posixpath

import numpy as np
import pyarrow as pa

from ray_al import storage

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def list_image_folder(src: str) -> tuple[list[str], list[str], list[str]]:
    """(sorted file URIs, their ids = paths relative to src, sorted class names) of a class-folder tree."""
    fs, root = storage.pyarrow_fs(src)
    from pyarrow import fs as pafs

    info = fs.get_file_info(root)
    if info.type != pafs.FileType.Directory:
        raise FileNotFoundError(
            f"image folder '{src}' not found (or not a directory). Expected SRC/<class>/<image> files; "
            "for s3:// check the bucket, the prefix and data.s3_endpoint."
        )
    entries = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    rel_paths = sorted(
        posixpath.relpath(e.path, root.rstrip("/"))
        for e in entries
        if e.type == pafs.FileType.File and e.path.lower().endswith(IMAGE_EXTENSIONS)
    )
    flat = [p for p in rel_paths if "/" not in p]
    if flat:
        raise ValueError(
            f"image folder '{src}': {len(flat)} images sit directly in the root (e.g. '{flat[0]}'); every image "
            "must be inside a class sub-folder SRC/<class>/."
        )
    if not rel_paths:
        raise ValueError(f"image folder '{src}' holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
    classes = sorted({p.split("/", 1)[0] for p in rel_paths})
    scheme = src.split("://", 1)[0] + "://" if "://" in src else ""
    uris = [scheme + posixpath.join(root.rstrip("/"), p) for p in rel_paths]
    return uris, rel_paths, classes


def _label_rows(batch: dict, root: str, classes: list[str]) -> dict:
    index = {c: i for i, c in enumerate(classes)}
    rel = [posixpath.relpath(str(p), root.rstrip("/")) for p in batch["path"]]
    labels = np.asarray([index[r.split("/", 1)[0]] for r in rel], dtype=np.int64)
    return {
        "id": np.asarray(rel, dtype=object),
        "image": batch["bytes"],
        "label": labels,
        "label_name": np.asarray([classes[y] for y in labels], dtype=object),
        "path": np.asarray(rel, dtype=object),
    }


def ingest(src: str, dest: str, *, overwrite: bool = False) -> dict:
    """Ingest an image folder into DEST (a directory of Parquet files plus `_classes.json`)."""
    import ray

    from ray_al.ray_utils import ensure_ray

    if storage.exists(dest) and storage.listdir(dest) and not overwrite:
        raise FileExistsError(f"ingest destination '{dest}' is not empty; choose a new one or pass --overwrite.")
    if overwrite and storage.exists(dest):
        storage.remove_tree(dest)
    uris, _ids, classes = list_image_folder(src)
    ensure_ray()
    fs, root = storage.pyarrow_fs(src)
    paths = [storage.pyarrow_fs(u)[1] for u in uris]
    ds = ray.data.read_binary_files(paths, include_paths=True, filesystem=fs)
    ds = ds.map_batches(_label_rows, fn_kwargs={"root": root, "classes": classes}, batch_format="numpy")
    dest_fs, dest_path = storage.pyarrow_fs(dest)
    ds.write_parquet(dest_path, filesystem=dest_fs)
    summary = {"source": src, "images": len(uris), "classes": classes}
    storage.write_json_atomic(storage.join(dest, "_classes.json"), summary)
    return summary


def folder_table(src: str) -> pa.Table:
    """Small folders without Ray (built-in datasets given as a folder): the same rows as `ingest`."""
    uris, ids, classes = list_image_folder(src)
    labels = [classes.index(i.split("/", 1)[0]) for i in ids]
    return pa.table({
        "id": pa.array(ids, pa.string()),
        "image": pa.array([storage.read_bytes(u) for u in uris], pa.binary()),
        "label": pa.array(labels, pa.int64()),
        "label_name": pa.array([classes[y] for y in labels], pa.string()),
        "path": pa.array(ids, pa.string()),
    })


def read_classes(dest: str) -> list[str] | None:
    """Class names that `ingest` recorded next to the Parquet files, if any."""
    uri = storage.join(dest, "_classes.json")
    return json.loads(storage.read_text(uri))["classes"] if storage.exists(uri) else None
