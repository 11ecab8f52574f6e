"""Image folder (local or s3://) -> pool Parquet (`id`, `image`, `label`, `label_name`, `path`).

Two layouts: class sub-folders (`SRC/<class>/.../<image>`: labeled, classes in alphabetical order), or an
unlabeled folder (images directly in SRC, at any depth below it, or `unlabeled=True` for any tree): every
`label` is null, and the class names annotators will use come from `classes` (`data.classes`).

`python -m ray_al.data ingest SRC DEST`. The folder is listed directory by directory into one compact Arrow
table (`id`, `label`), which Ray Data splits into blocks whose files are read in parallel tasks; the original
encoded bytes are kept (no re-encoding). Ids are the paths relative to SRC, which stay stable when the folder
grows; `path` is each file's own URI (SRC/<id>, a local SRC made absolute), where an s3:// source's images are
shown to annotators (ray_al.run.oracle.query_uris). The driver holds no per-file Python object (1M files would cost ~1 KiB each).
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyarrow import fs as pafs

from ray_al.core import storage

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
MIN_FILES_PER_TASK = 64  # below this a read task costs more than it reads
FILES_PER_BATCH = 256  # files read (bytes held) at once by a task, whatever the image size
_NAMES_PER_CHUNK = 4096  # names buffered as Python str before they become an Arrow array


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _scan(fs: pafs.FileSystem, path: str) -> Iterator[tuple[str, bool, bool]]:
    """(name, is_file, is_dir) of a directory's entries; streamed for local folders (one S3 listing per prefix)."""
    if isinstance(fs, pafs.LocalFileSystem):
        with os.scandir(path) as entries:
            for e in entries:
                yield e.name, e.is_file(), e.is_dir()
        return
    for e in fs.get_file_info(pafs.FileSelector(path)):
        yield e.base_name, e.type == pafs.FileType.File, e.type == pafs.FileType.Directory


def _tree_ids(fs: pafs.FileSystem, root: str, start: str, skipped: dict) -> pa.Array:
    """Sorted ids (paths relative to root) of the images anywhere under root/start ("" = root itself); other
    files are counted in `skipped` (with the first one seen, to name in the report)."""
    chunks, names, pending = [], [], [start]
    while pending:
        rel = pending.pop()
        prefix = f"{rel}/" if rel else ""
        for base, is_file, is_dir in _scan(fs, f"{root}/{rel}" if rel else root):
            if is_dir:
                pending.append(prefix + base)
            elif is_file and _is_image(base):
                names.append(prefix + base)
                if len(names) >= _NAMES_PER_CHUNK:
                    chunks.append(pa.array(names, pa.string()))
                    names = []
            elif is_file:
                skipped["files"] = skipped.get("files", 0) + 1
                skipped.setdefault("example", prefix + base)
    chunks.append(pa.array(names, pa.string()))
    ids = pa.concat_arrays(chunks)
    return ids.take(pc.array_sort_indices(ids))  # byte order of UTF-8 = Python's str order


def _root_entries(fs: pafs.FileSystem, src: str, root: str) -> tuple[list[str], int]:
    """(sub-folder names, number of images directly in root); refuses a missing root."""
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        raise FileNotFoundError(
            f"image folder '{src}' not found (or not a directory). Expected SRC/<class>/<image> files or a "
            "folder of unlabeled images; for s3:// check the bucket, the prefix and data.s3_endpoint."
        )
    dirs, count = [], 0
    for base, is_file, is_dir in _scan(fs, root):
        if is_dir:
            dirs.append(base)
        elif is_file and _is_image(base):
            count += 1
    return dirs, count


def list_image_folder(src: str, skipped: dict | None = None, unlabeled: bool | None = None,
                      classes: tuple[str, ...] = ()) -> tuple[pa.Table, list[str]]:
    """(table of `id` = path relative to src, sorted, and `label`; class names) of an image folder.
    unlabeled: None = decide from the layout (images directly in src: unlabeled), True = every image of the
    tree is unlabeled (null labels; names = `classes`), False = class sub-folders only. `skipped`, if given,
    gets the count of files that are not images (`files`) and one of them (`example`)."""
    skipped = {} if skipped is None else skipped
    fs, root = storage.pyarrow_fs(src)
    root = root.rstrip("/")
    dirs, flat = _root_entries(fs, src, root)
    if unlabeled is None:
        unlabeled = flat > 0
    if unlabeled:
        ids = _tree_ids(fs, root, "", skipped)
        if not len(ids):
            raise ValueError(f"image folder '{src}' holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
        return pa.table({"id": ids, "label": pa.nulls(len(ids), pa.int64())}), list(classes)
    if flat:
        raise ValueError(f"image folder '{src}': {flat} images sit directly in the root; with class sub-folders "
                         "every image must be inside SRC/<class>/ (or ingest it as unlabeled).")
    return _class_folders(fs, src, root, dirs, skipped)


def _class_folders(fs: pafs.FileSystem, src: str, root: str, dirs: list[str], skipped: dict
                   ) -> tuple[pa.Table, list[str]]:
    # class by class in the order of their ids ('a/..' < 'a-b/..' is not 'a' < 'a-b'), so ids come out sorted
    per_class = {d: ids for d in sorted(dirs, key=lambda d: d + "/") if len(ids := _tree_ids(fs, root, d, skipped))}
    if not per_class:
        raise ValueError(f"image folder '{src}' holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
    classes = sorted(per_class)
    labels = [np.full(len(ids), classes.index(c), np.int64) for c, ids in per_class.items()]
    return pa.table({"id": pa.chunked_array(list(per_class.values()), pa.string()),
                     "label": pa.chunked_array(labels, pa.int64())}), classes


def _read_file(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


def _read_rows(batch: pa.Table, fs: pafs.FileSystem, root: str, classes: list[str], source: str) -> pa.Table:
    """One block of listed rows -> pool rows, the files' bytes read here (in a Ray task), not in the driver;
    `path` is each file's own URI under `source` (annotators' tools open it there)."""
    ids, labels = batch.column("id"), batch.column("label")
    names_in_folder = ids.to_pylist()
    images = [_read_file(fs, f"{root}/{i}") for i in names_in_folder]
    names = pc.take(pa.array(classes, pa.string()), labels) if labels.null_count < len(labels) \
        else pa.nulls(len(labels), pa.string())  # unlabeled: no class name (take on an empty list fails)
    paths = pa.array([f"{source}/{i}" for i in names_in_folder], pa.string())
    return pa.table({"id": ids, "image": pa.array(images, pa.binary()), "label": labels, "label_name": names,
                     "path": paths})


def ingest(src: str, dest: str, *, overwrite: bool = False, unlabeled: bool | None = None,
           classes: tuple[str, ...] = ()) -> dict:
    """Ingest an image folder into DEST (a directory of Parquet files plus `_classes.json`); `unlabeled` and
    `classes` as in `list_image_folder`."""
    import ray

    from ray_al.workers.ray_utils import ensure_ray

    if storage.exists(dest) and storage.listdir(dest) and not overwrite:
        raise FileExistsError(f"ingest destination '{dest}' is not empty; choose a new one or pass --overwrite.")
    if overwrite and storage.exists(dest):
        storage.remove_tree(dest)
    started, skipped = time.perf_counter(), {}
    listing, classes = list_image_folder(src, skipped, unlabeled, classes)
    ensure_ray()
    fs, root = storage.pyarrow_fs(src)
    # as many read tasks as `read_binary_files` would plan (Ray's minimum, 200); output blocks are then sized
    # by Ray's target block size as before, so are the Parquet files and row groups
    tasks = min(ray.data.DataContext.get_current().read_op_min_num_blocks,
                -(-listing.num_rows // MIN_FILES_PER_TASK))
    ds = ray.data.from_arrow(listing, override_num_blocks=tasks)
    ds = ds.map_batches(_read_rows, fn_kwargs={"fs": fs, "root": root.rstrip("/"), "classes": classes,
                                               "source": _source(src)},
                        batch_format="pyarrow", batch_size=FILES_PER_BATCH)
    dest_fs, dest_path = storage.pyarrow_fs(dest)
    ds.write_parquet(dest_path, filesystem=dest_fs)
    seconds = time.perf_counter() - started
    summary = {"source": src, "images": listing.num_rows, "classes": classes,
               "labeled": listing.column("label").null_count == 0, "seconds": round(seconds, 1),
               "images_per_s": round(listing.num_rows / max(seconds, 1e-9), 1),
               "skipped_files": skipped.get("files", 0), "skipped_example": skipped.get("example", "")}
    storage.write_json_atomic(storage.join(dest, "_classes.json"), summary)
    return summary


def folder_table(src: str, unlabeled: bool | None = None, classes: tuple[str, ...] = ()) -> pa.Table:
    """Small folders without Ray (built-in datasets given as a folder): the same rows as `ingest`."""
    listing, classes = list_image_folder(src, None, unlabeled, classes)
    fs, root = storage.pyarrow_fs(src)
    return _read_rows(listing, fs, root.rstrip("/"), classes, _source(src))


def _source(src: str) -> str:
    """The folder's URI as files under it are named: s3:// as given, a local folder absolute."""
    return src.rstrip("/") if storage.is_s3(src) else os.path.abspath(src)


def read_classes(dest: str) -> list[str] | None:
    """Class names that `ingest` recorded next to the Parquet files, if any."""
    uri = storage.join(dest, "_classes.json")
    return json.loads(storage.read_text(uri))["classes"] if storage.exists(uri) else None
