"""Every registered selection method on one run's round-0 embeddings, with whichever checkout is on PYTHONPATH
(the layered layout or the flat one before it): run it on two checkouts and compare the JSON files to see
that a change left every method's picks as they were (docs/RESULTS.md, "The layered layout changed no selection", 2026-12-06).

    PYTHONPATH=<checkout> python docs/tools/selections_on_one_round.py RUN_DIR OUT.json

RUN_DIR: a finished `python -m ray_al.cycle --smoke-test` run (its round 0 embeddings and ledger)."""
import json, sys, shutil, tempfile
try:
    from ray_al.core import config as config_mod
    from ray_al.run.rundir import RunDir
    from ray_al.run.ledger import Ledger
    from ray_al.loop.selection import choose_queries as pick
except ImportError:
    from ray_al import config as config_mod
    from ray_al.rundir import RunDir
    from ray_al.ledger import Ledger
    from ray_al.selection import select_ids as pick
from ray_al import acquisition
src, out = sys.argv[1], sys.argv[2]
methods = sorted(acquisition.ACQUISITIONS) + ["auto"]
res = {}
for method in methods:
    committee = "committee_probs" in acquisition.needs(method, optional=False) if method != "auto" else False
    extra = ["select.committee=heads"] if committee else []
    cfg = config_mod.smoke(config_mod.load(None, ["al.initial_size=20", "al.budget=15", f"select.method={method}", *extra]))
    run = RunDir.open(src)
    ledger = Ledger.load(src, id_type=run.info["pool"]["spec"]["id_type"]).up_to_round(0)
    tmp = tempfile.mkdtemp()
    try:
        sel = pick(cfg, run.round_uri(0, "embeddings"), ledger, 15, 0, zero_shot_uri=f"{tmp}/z.parquet")
        res[method] = {"ids": [str(i) for i in sel.ids], "method": sel.method, "why": sel.why}
    except Exception as e:
        res[method] = {"error": f"{type(e).__name__}: {e}"[:300]}
    shutil.rmtree(tmp)
    print(method, res[method].get("ids", res[method].get("error"))[:5], flush=True)
json.dump(res, open(out, "w"), indent=1)
