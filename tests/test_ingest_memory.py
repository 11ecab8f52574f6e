"""The driver's memory of listing an image folder does not grow with its file count (beyond the compact Arrow
table of ids): at 1M files a per-file Python object (~1 KiB each) cost the driver over 1 GiB."""
from __future__ import annotations

import json
import os
import subprocess
import sys

MIB = 2**20
# Sorting a class's ids copies them once; a per-file Python object would add ~20 MiB over the 18,000 extra files
COPIES, MARGIN = 3, 2 * MIB

# In a fresh process: RSS before, then the peak (VmHWM, reset via clear_refs) of listing the folder.
_MEASURE = r"""
import json, sys
from ray_al.data.ingest import list_image_folder

def kb(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(key + ":"))

list_image_folder(sys.argv[2])  # warm-up: first-call allocations (imports, caches) are not per file
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak mark restarts at the current RSS
before = kb("VmRSS")
table, _ = list_image_folder(sys.argv[1])
print(json.dumps({"peak": (kb("VmHWM") - before) * 1024, "rows": table.num_rows, "nbytes": table.nbytes}))
"""


def _folder(root, files: int, classes: int = 4):
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
    for i in range(files):
        (root / f"class{i % classes}" / f"img_{i:08d}.png").write_bytes(b"x")  # listing never opens them
    return root


def _listing_peak(folder, warm) -> dict:
    # Arrow on malloc: mimalloc reserves memory in MiB steps, which would hide what the listing holds
    env = {**os.environ, "ARROW_DEFAULT_MEMORY_POOL": "system"}
    proc = subprocess.run([sys.executable, "-c", _MEASURE, str(folder), str(warm)],
                          capture_output=True, text=True, timeout=400, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_listing_memory_does_not_grow_with_file_count(tmp_path):
    warm = _folder(tmp_path / "warm", 8)
    small = _listing_peak(_folder(tmp_path / "small", 2_000), warm)
    large = _listing_peak(_folder(tmp_path / "large", 20_000), warm)
    assert (small["rows"], large["rows"]) == (2_000, 20_000)
    allowed = COPIES * (large["nbytes"] - small["nbytes"]) + MARGIN
    assert large["peak"] - small["peak"] <= allowed, (
        f"listing 20,000 files peaked {large['peak'] / MIB:.1f} MiB above the driver's RSS, 2,000 files "
        f"{small['peak'] / MIB:.1f} MiB: it grows with the file count (allowed {allowed / MIB:.1f} MiB)")


def test_listing_is_sorted_like_the_paths_with_labels_by_sorted_class(tmp_path):
    from ray_al.data.ingest import list_image_folder

    files = ["a/x.png", "a/sub/y.JPG", "a-b/z.png", "a.b/w.png", "b/deep/er/v.jpeg", "b/notes.txt", "empty/"]
    for rel in files:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        if not rel.endswith("/"):
            (tmp_path / rel).write_bytes(b"x")
    table, classes = list_image_folder(str(tmp_path))
    images = sorted(f for f in files if f.lower().endswith((".png", ".jpg", ".jpeg")))
    assert table.column("id").to_pylist() == images and classes == ["a", "a-b", "a.b", "b"]
    assert table.column("label").to_pylist() == [classes.index(i.split("/")[0]) for i in images]
