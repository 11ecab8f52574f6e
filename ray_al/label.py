"""``python -m ray_al.label``: the file oracle for human annotators.

    python -m ray_al.label export RUN_DIR --out queries.csv [--images-dir DIR]
    python -m ray_al.label export RUN_DIR --format label-studio --out tasks.json [--images-dir DIR] [--document-root DIR]
    python -m ray_al.label import RUN_DIR labels.csv [--allow-partial]
    python -m ray_al.label import RUN_DIR label_studio_export.json [--agreement majority|unanimous]
    python -m ray_al.label status RUN_DIR

``export`` writes the pending query batch (``id,uri,label``; fill in ``label`` with a class index or
class name, or ``none`` for an image that belongs to none of the classes); pools that store image bytes
get their images written to ``--images-dir``. ``import`` validates the whole file and commits it
(nothing is written if any line is wrong). ``--format label-studio`` writes Label Studio tasks (in
acquisition order, with scores and the round model's prediction) and the labelling config XML; ``import`` of a
``.json`` file reads Label Studio's JSON export (ray_al/run/labelstudio.py says how several annotators per task
are combined). Then resume the cycle with
``python -m ray_al.cycle --resume RUN_DIR``. Works with local paths and ``s3://`` (pass
``--s3-endpoint`` for non-AWS stores). User errors print one paragraph and exit with status 2.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from ray_al.core import storage
from ray_al.cli import run_main
from ray_al.run import labelstudio
from ray_al.run.ledger import OOD_LABEL, Ledger
from ray_al.run.oracle import OracleError, export_queries, import_labels, load_image_bytes
from ray_al.run.rundir import RunDir, batch_name
from ray_al.run.runlock import RunLock


def _export(args: argparse.Namespace) -> None:
    rd = RunDir.open(args.run_dir)
    image_bytes = None
    if args.images_dir:
        r = rd.pending_query_round()
        if r is not None:
            q = rd.read_queries(r)
            need = [i for i, u in zip(q.column("id").to_pylist(), q.column("uri").to_pylist()) if u is None]
            if need:
                if not rd.pool:
                    raise OracleError(f"{rd.uri}/run.json records no pool, so the images of the queries "
                                      "cannot be read; export without --images-dir to get the ids only")
                image_bytes = load_image_bytes(rd.pool, need)
    if args.format == "label-studio":
        n, config = labelstudio.export_tasks(rd, args.out, config_out=args.label_config, document_root=args.document_root,
                                             image_bytes_by_id=image_bytes, images_dir=args.images_dir)
        print(f"wrote {n} Label Studio tasks of {batch_name(rd.pending_query_round())} to {args.out} and the "
              f"labelling config to {config}\ncreate a project with that config, import the tasks, label them, "
              f"export as JSON, then: python -m ray_al.label import {rd.uri} EXPORT.json")
        return
    n = export_queries(rd, args.out, image_bytes_by_id=image_bytes, images_dir=args.images_dir)
    r = rd.pending_query_round()
    print(f"wrote {n} queries of {batch_name(r)} to {args.out}"
          + (f" (images in {args.images_dir})" if args.images_dir else "")
          + "\nfill in the label column (a class index or name, or none for an image in none of the classes),"
          + f" then: python -m ray_al.label import {rd.uri} {args.out}")


def _import(args: argparse.Namespace) -> None:
    rd = RunDir.open(args.run_dir)
    r = rd.pending_query_round()
    with RunLock(rd.uri, purpose="label import"):
        if args.labels_file.lower().endswith(".json"):
            ledger = labelstudio.import_export(rd, args.labels_file, allow_partial=args.allow_partial,
                                               agreement=args.agreement)
        else:
            ledger = import_labels(rd, args.labels_file, allow_partial=args.allow_partial)
    payload = rd.step_payload(r, "label") or {}
    ood = int(((ledger.rounds == r + 1) & (ledger.labels == OOD_LABEL)).sum())
    print(f"imported {payload.get('rows')} labels for {batch_name(r)} ({ood} of them 'none of these classes'; "
          f"ledger version {ledger.version}, "
          f"{len(ledger)} labels in all; {payload.get('unanswered', 0)} queries left unlabeled)\n"
          f"continue with: python -m ray_al.cycle --resume {rd.uri}")


def _status(args: argparse.Namespace) -> None:
    rd = RunDir.open(args.run_dir)
    info = rd.info
    ledger = Ledger.load(rd)
    counts = ledger.counts()
    print(f"run        {rd.uri} (created {info.get('created')})")
    names = rd.class_names
    print(f"classes    {rd.num_classes}" + (f": {', '.join(map(str, names))}" if names else ""))
    print(f"labels     {counts['rows']} (by source: {counts['by_source'] or '{}'}; "
          f"by round: {counts['by_round'] or '{}'})")
    print(f"none       {counts['ood']} answered 'none of these classes' (by source: "
          f"{counts['ood_by_source'] or '{}'}): never queried again nor trained on, counted in the budget")
    results = {row.get("round", r): row for r, row in zip(rd.committed_rounds(), rd.results())}
    print(f"rounds     committed: {sorted(results) or 'none'}")
    for r, row in sorted(results.items()):
        acc = row.get("test_accuracy", row.get("accuracy"))
        print(f"  round {r}: labels={row.get('num_labels', row.get('labels', '?'))}"
              + (f" accuracy={acc:.4f}" if isinstance(acc, (int, float)) else ""))
    pending = rd.pending_query_round()
    if pending is None:
        print("pending    no query batch awaiting labels")
    else:
        n = rd.read_queries(pending).num_rows
        print(f"pending    round {pending}: {n} queries awaiting labels "
              f"(python -m ray_al.label export {rd.uri} --out queries.csv)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ray_al.label", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--s3-endpoint", default=None,
                        help="S3 endpoint URL for s3:// paths (default: RAY_AL_S3_ENDPOINT / AWS_ENDPOINT_URL)")
    common.add_argument("--s3-region", default=None, help="S3 region (default: AWS_REGION or us-east-1)")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", parents=[common], help="write the pending query batch (CSV or Label Studio tasks)")
    e.add_argument("run_dir")
    e.add_argument("--out", required=True, help="CSV or tasks JSON to write (local path or s3://)")
    e.add_argument("--format", choices=("csv", "label-studio"), default="csv",
                   help="csv (id,uri,label; the default) or label-studio (tasks JSON + labelling config XML)")
    e.add_argument("--label-config", default=None,
                   help="label-studio: where to write the labelling config (default: OUT stem + .label_config.xml)")
    e.add_argument("--document-root", default=os.environ.get("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", "/"),
                   help="label-studio: Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT; local images get "
                        "/data/local-files/?d=<path under it> (default: that variable, else /)")
    e.add_argument("--images-dir", default=None,
                   help="write the queried images here when the pool stores image bytes")
    e.set_defaults(func=_export)
    i = sub.add_parser("import", parents=[common],
                       help="validate and commit a labels CSV (columns id,label) or a Label Studio JSON export")
    i.add_argument("run_dir")
    i.add_argument("labels_file", help="labels CSV, or Label Studio's JSON export (a .json file)")
    i.add_argument("--agreement", choices=labelstudio.AGREEMENT, default="majority",
                   help="Label Studio, several annotators per task: majority (ties refused) or unanimous")
    i.add_argument("--allow-partial", action="store_true",
                   help="accept a file that leaves some queries unlabeled")
    i.set_defaults(func=_import)
    s = sub.add_parser("status", parents=[common], help="rounds, labels and pending queries of a run")
    s.add_argument("run_dir")
    s.set_defaults(func=_status)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.s3_endpoint or args.s3_region:
        storage.configure_s3(args.s3_endpoint, args.s3_region)
    return run_main(lambda: args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
