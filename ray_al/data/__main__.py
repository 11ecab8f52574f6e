"""`python -m ray_al.data ingest SRC DEST`: an image folder -> a pool Parquet.

SRC and DEST are local paths or s3:// URIs (set --s3-endpoint for MinIO/moto). Ids are the image paths
relative to SRC. With class sub-folders, labels are the sub-folders in alphabetical order (saved in
DEST/_classes.json); a folder with images directly in it (or --unlabeled) is an unlabeled pool: null labels,
and --classes names the classes annotators will use.
"""
from __future__ import annotations

import argparse
import sys

from ray_al.core import storage
from ray_al.cli import run_main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ray_al.data", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ing = sub.add_parser("ingest", help="image folder -> pool Parquet (id, image, label, label_name, path)")
    ing.add_argument("src", help="folder with one sub-folder per class, or of unlabeled images (local or s3://)")
    ing.add_argument("dest", help="output directory for the Parquet files (local or s3://)")
    ing.add_argument("--overwrite", action="store_true", help="replace a non-empty DEST")
    ing.add_argument("--unlabeled", action="store_true",
                     help="every image of the tree is unlabeled, sub-folders included (default: only when images "
                          "sit directly in SRC)")
    ing.add_argument("--classes", default="", help="comma-separated class names of an unlabeled pool")
    ing.add_argument("--s3-endpoint", default=None, help="S3 endpoint URL (MinIO, moto, ...)")
    ing.add_argument("--s3-region", default=None)
    args = parser.parse_args(argv)
    storage.configure_s3(args.s3_endpoint, args.s3_region)
    return run_main(lambda: _ingest(args))


def _ingest(args: argparse.Namespace) -> int:
    from ray_al.data.ingest import IMAGE_EXTENSIONS, ingest

    classes = tuple(c.strip() for c in args.classes.split(",") if c.strip())
    summary = ingest(args.src, args.dest, overwrite=args.overwrite, unlabeled=args.unlabeled or None,
                     classes=classes)
    kind = "labeled" if summary["labeled"] else "unlabeled"
    print(f"ingested {summary['images']} {kind} images of {len(summary['classes'])} classes "
          f"({', '.join(summary['classes'][:10])}{' ...' if len(summary['classes']) > 10 else ''}) into {args.dest} "
          f"in {summary['seconds']:.1f} s ({summary['images_per_s']:.0f} images/s)")
    if summary["skipped_files"]:
        print(f"skipped {summary['skipped_files']} files that are not images ({', '.join(IMAGE_EXTENSIONS)}), "
              f"e.g. {summary['skipped_example']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
