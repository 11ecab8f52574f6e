"""Benchmark: what a round costs beyond its work, before and after a change, measured in the same run.

    python -m ray_al.bench.overhead --before-ref HEAD~3            # both trees, both launch modes
    python -m ray_al.bench.overhead --before-ref REF --modes init   # only `python -m ray_al.cycle`

For each tree (`before`: REF checked out into a temporary git worktree; `after`: this checkout) and each
launch mode, it runs the smoke cycle (`python -m ray_al.cycle --smoke-test`: 400-image digits pool,
1 epoch, 3 rounds) and reads the run directory's step records:
* `init`: `python -m ray_al.cycle` in a fresh process (it starts its own local Ray with `ray.init()`);
* `job`: `ray job submit --working-dir TREE` to a local head started here with `ray start --head`.
Per round: train (Ray Train fit: controller, worker group, data, epochs, checkpoints), of which the
epochs' own work (`train_seconds` reported by the worker), embed (Ray Data read + actor pool + write,
evaluation), select, label, and the rest of the wall time (process and Ray start-up, pool preparation,
report). The last line is JSON with the after/before ratios; on an idle machine the scale issue asks
wall(after) <= wall(before) / 3 in both modes.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STAGES = ("train", "embed", "select", "label")
# Not shipped with a job: the virtual environment and run outputs of the tree.
JOB_EXCLUDES = [".venv", ".git", "runs", "*.whl", ".pytest_cache"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def checkout(ref: str, where: Path) -> Path:
    """A worktree of `ref` (the tree before the change)."""
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(where), ref], check=True,
                   capture_output=True)
    return where


def _env(tree: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    return env


class LocalHead:
    """`ray start --head` on loopback ports of its own, stopped with its whole session."""

    def __init__(self, tree: Path, cpus: int, env: dict | None = None):
        self.temp = tempfile.mkdtemp(prefix="ral_oh_", dir="/tmp")  # short: unix socket paths
        self.dashboard, self.port = _free_port(), _free_port()
        ray_bin = str(Path(sys.executable).parent / "ray")
        cmd = [ray_bin, "start", "--head", "--block", f"--port={self.port}", f"--temp-dir={self.temp}",
               "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard}",
               f"--num-cpus={cpus}", "--num-gpus=0",
               # ports of its own: another Ray on this machine (a test's, a user's) holds the defaults, and a
               # job agent that cannot bind its port leaves the head answering "No available agent"
               f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
               f"--runtime-env-agent-port={_free_port()}", f"--metrics-export-port={_free_port()}"]
        self.log = open(Path(self.temp) / "head.log", "w")
        # RAY_ADDRESS: this head's own, for what runs on it: with another Ray on the machine, Ray Train's
        # PlacementGroupCleaner (a State API call with no address) died on "Found multiple active Ray
        # instances" and a killed driver's placement group kept a CPU reserved, so a later embedding waited
        # for it forever (seen in make test at 11d5188, tests/test_walkthrough.py)
        head_env = {**_env(tree), **(env or {}), "RAY_ADDRESS": self.gcs_address}
        self.proc = subprocess.Popen(cmd, env=head_env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard}"

    @property
    def gcs_address(self) -> str:
        """What a driver joins with (RAY_ADDRESS)."""
        return f"127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 120.0) -> None:
        from urllib.request import urlopen

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited: {(Path(self.temp) / 'head.log').read_text()[-2000:]}")
            try:
                with urlopen(self.address + "/api/version", timeout=2):
                    return
            except OSError:
                time.sleep(1.0)
        raise TimeoutError(f"the local head's job server did not come up in {timeout:.0f} s")

    def submit(self, tree: Path, runtime_env: dict, entrypoint: list[str], timeout: float = 3600,
               agent_wait_s: float = 90.0) -> subprocess.CompletedProcess:
        """`ray job submit --working-dir tree --runtime-env-json ... -- entrypoint`, run to its end. A head
        whose job agent has not registered yet answers "No available agent" before starting anything: that
        submission is repeated (for up to agent_wait_s), nothing else."""
        cmd = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", self.address,
               "--working-dir", str(tree), "--runtime-env-json", json.dumps(runtime_env), "--", *entrypoint]
        deadline = time.monotonic() + agent_wait_s
        while True:
            proc = subprocess.run(cmd, cwd=tree, env=_env(tree), capture_output=True, text=True, timeout=timeout)
            if "No available agent" not in proc.stdout + proc.stderr or time.monotonic() > deadline:
                return proc
            time.sleep(2.0)

    def stop(self, grace_s: float = 30.0) -> None:
        """SIGTERM (`ray start --block` then stops Ray), and after grace_s SIGKILL to the whole group."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        shutil.rmtree(self.temp, ignore_errors=True)


def cycle_command(run_dir: Path, extra: list[str]) -> list[str]:
    return ["python", "-m", "ray_al.cycle", "--smoke-test", f"run.dir={run_dir}", *extra]


def run_once(tree: Path, mode: str, run_dir: Path, extra: list[str], cpus: int) -> float:
    """Wall seconds of one smoke cycle of `tree` launched in `mode`."""
    cmd = cycle_command(run_dir, extra)
    cmd[0] = sys.executable
    if mode == "job":
        head = LocalHead(tree, cpus)
        head.wait_ready()
        started = time.perf_counter()
        try:
            proc = head.submit(tree, {"excludes": JOB_EXCLUDES}, cmd)
        finally:
            head.stop()
    else:
        started = time.perf_counter()
        proc = subprocess.run(cmd + [f"run.ray_num_cpus={cpus}"], cwd=tree, env=_env(tree), capture_output=True,
                              text=True, timeout=3600)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} run of {tree} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return wall


def stage_seconds(run_dir: Path) -> list[dict]:
    """Per round: seconds per stage from results.jsonl, and the epochs' own work from the train step."""
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines() if line.strip()]
    out = []
    for row in rows:
        step = json.loads((run_dir / "rounds" / f"{row['round']:04d}" / "steps" / "train.json").read_text())
        payload = step.get("payload", step)
        work = float((payload.get("metrics") or {}).get("train_seconds", 0.0))
        out.append({**{s: float(row["seconds"].get(s, 0.0)) for s in STAGES}, "train_work": work})
    return out


def summarize(wall: float, rounds: list[dict]) -> dict:
    n = max(len(rounds), 1)
    mean = {s: sum(r[s] for r in rounds) / n for s in (*STAGES, "train_work")}
    staged = sum(r[s] for r in rounds for s in STAGES)
    return {"wall": round(wall, 1), "rounds": len(rounds), **{f"{k}_per_round": round(v, 2) for k, v in mean.items()},
            "train_overhead_per_round": round(mean["train"] - mean["train_work"], 2),
            "outside_rounds": round(wall - staged, 1)}


def format_rows(results: dict) -> str:
    cols = ("wall", "train_per_round", "train_work_per_round", "train_overhead_per_round", "embed_per_round",
            "select_per_round", "label_per_round", "outside_rounds")
    head = f"{'tree':8} {'mode':5} " + " ".join(f"{c.replace('_per_round', '/rnd'):>16}" for c in cols)
    lines = [head, "-" * len(head)]
    for (tree, mode), r in results.items():
        lines.append(f"{tree:8} {mode:5} " + " ".join(f"{r[c]:>16}" for c in cols))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ray_al.bench.overhead", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before-ref", required=True, help="git ref of the tree to compare against")
    p.add_argument("--modes", default="init,job", help="comma-separated: init, job")
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray / head")
    p.add_argument("overrides", nargs="*", help="extra section.key=value for both cycles")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="ray_al_overhead_"))
    trees = {"before": checkout(args.before_ref, work / "before"), "after": REPO}
    results: dict = {}
    try:
        for mode in args.modes.split(","):
            for name, tree in trees.items():  # before then after, back to back: same machine state
                run_dir = work / f"{name}-{mode}"
                wall = run_once(tree, mode, run_dir, args.overrides, args.cpus)
                results[(name, mode)] = summarize(wall, stage_seconds(run_dir))
                print(f"{name:6} {mode:4} {wall:7.1f} s", flush=True)
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(trees["before"])],
                       capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    print(format_rows(results))
    ratios = {f"{mode}_wall_ratio": round(results[("after", mode)]["wall"] / results[("before", mode)]["wall"], 3)
              for mode in args.modes.split(",")}
    print(json.dumps({"before_ref": args.before_ref, **ratios,
                      **{f"{t}_{m}": r for (t, m), r in results.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
