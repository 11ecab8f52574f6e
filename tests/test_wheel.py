"""ray_al's wheel, built from this checkout, installed into a fresh venv outside it, run from there (README
"Install"): the console scripts `ray-al-cycle --smoke-test` (a short local Ray run), `ray-al-sweep --help`
and `ray-al-label --help` / `status`, with no PYTHONPATH and a working directory outside the checkout.

Ray, torch and the other dependencies are not installed again (gigabytes, and this machine installs offline):
the new venv sees the test interpreter's site-packages through a .pth line. A .pth line only appends a
directory to sys.path; the `__editable__` .pth files in it are not executed, so the checkout's editable
install of ray_al stays invisible, and `test_the_venv_imports_the_wheels_ray_al` checks that it does.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import ray_al

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ("ray-al-cycle", "ray-al-sweep", "ray-al-label")
# What the build reads: setuptools would otherwise write build/ and *.egg-info into the checkout, where a
# second test run (or the other pytest worker) could meet them half-written.
SOURCES = ("pyproject.toml", "README.md", "ray_al")


def _run(cmd, timeout: float, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)
    shown = ' '.join(map(str, cmd))
    assert p.returncode == 0, f"{shown} exited {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


def _dependency_dirs() -> list[str]:
    """The test interpreter's site-packages directories (those a .pth of its own added too), in its order."""
    dirs = [sysconfig.get_paths()[k] for k in ("purelib", "platlib")]
    dirs += [p for p in sys.path if Path(p).name == "site-packages"]
    return [d for d in dict.fromkeys(dirs) if Path(d).is_dir()]


def _base_python() -> Path:
    """The interpreter this venv was made from: the new venv must share its ABI with the dependencies."""
    v = sys.version_info
    exe = Path(sys.base_prefix) / "bin" / f"python{v.major}.{v.minor}"
    assert exe.is_file(), f"no {exe}: the test venv's base interpreter is needed to make a fresh venv"
    return exe


class Installed:
    """A fresh venv holding the wheel; `run` calls one of its programs with a bare environment."""

    def __init__(self, root: Path):
        self.root, self.venv, self.work = root, root / "venv", root / "work"
        self.wheel: Path | None = None

    def build_and_install(self) -> None:
        src, dist = self.root / "src", self.root / "dist"
        src.mkdir()
        for name in SOURCES:
            if (REPO / name).is_dir():
                shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(REPO / name, src / name)
        _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
              "-w", dist, src], timeout=300)
        (self.wheel,) = dist.glob("ray_al-*.whl")
        _run([_base_python(), "-m", "venv", self.venv], timeout=300)
        deps = _dependency_dirs()
        purelib = Path(self.python("-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
        (purelib / "ray_al_test_dependencies.pth").write_text("".join(d + "\n" for d in deps))
        self.python("-m", "pip", "install", "--no-deps", "--no-index", "-q", self.wheel, timeout=300)
        self.work.mkdir()

    def env(self) -> dict[str, str]:
        # RAY_ADDRESS=local: a Ray of its own, never a `ray start` head another test left on this machine.
        return {"PATH": f"{self.venv / 'bin'}:/usr/local/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"),
                "RAY_ADDRESS": "local"}

    def run(self, program: str, *args, timeout: float = 300) -> subprocess.CompletedProcess:
        return _run([self.venv / "bin" / program, *args], timeout=timeout, cwd=self.work, env=self.env())

    def python(self, *args, timeout: float = 300) -> subprocess.CompletedProcess:
        return _run([self.venv / "bin" / "python", *args], timeout=timeout, cwd=self.root, env=self.env())


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    root = tmp_path_factory.mktemp("wheel")
    assert not root.resolve().is_relative_to(REPO), f"{root} is inside the checkout"
    inst = Installed(root)
    inst.build_and_install()
    return inst


def test_the_wheel_holds_every_module_and_the_three_console_scripts(installed):
    with zipfile.ZipFile(installed.wheel) as whl:
        names = whl.namelist()
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = whl.read(entry_points).decode()
    modules = sorted(n for n in names if n.startswith("ray_al/") and n.endswith(".py"))
    expected = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "ray_al").rglob("*.py"))
    assert modules == expected  # ray_al/data has no __init__.py: a plain find_packages would drop it
    for script, module in zip(SCRIPTS, ("cycle", "sweep", "label")):
        assert f"{script} = ray_al.{module}:main" in scripts
        assert (installed.venv / "bin" / script).is_file(), f"pip made no {script} console script"


def test_the_wheel_names_no_path_beside_the_checkout(installed):
    """The installed library must not reach back into the checkout or its neighbours (../shared)."""
    neighbour = re.compile(r"\.\./shared|/work/shared|[\"']shared[\"']\s*/|/\s*[\"']shared[\"']|parents\[[3-9]\]")
    with zipfile.ZipFile(installed.wheel) as whl:
        texts = {n: whl.read(n).decode() for n in whl.namelist() if n.startswith("ray_al/")}
    hits = [f"{name}:{i}: {line.strip()}" for name, text in texts.items()
            for i, line in enumerate(text.splitlines(), 1) if neighbour.search(line) or str(REPO) in line]
    assert hits == []


def test_the_venv_imports_the_wheels_ray_al(installed):
    code = "import json, sys, ray_al; print(json.dumps([ray_al.__file__, ray_al.__version__, sys.path]))"
    where, version, path = json.loads(installed.python("-c", code).stdout)
    assert Path(where).is_relative_to(installed.venv), f"ray_al imported from {where}, not from the wheel"
    assert version == ray_al.__version__ and installed.wheel.name.startswith(f"ray_al-{version}-")
    deps = set(_dependency_dirs())
    leaks = [p for p in path if p and p not in deps and Path(p).resolve().is_relative_to(REPO)]
    assert leaks == [], f"the fresh venv's sys.path reaches into the checkout: {leaks}"


def test_sweep_and_label_console_scripts_print_their_help(installed):
    sweep = installed.run("ray-al-sweep", "--help", timeout=120).stdout
    for option in ("--config", "--smoke-test", "--resume", "select.method"):
        assert option in sweep, f"ray-al-sweep --help lacks {option}"
    label = installed.run("ray-al-label", "--help", timeout=120).stdout
    for command in ("export", "import", "status"):
        assert command in label, f"ray-al-label --help lacks {command}"
    export = installed.run("ray-al-label", "export", "--help", timeout=120).stdout
    assert "--format" in export and "label-studio" in export


@pytest.mark.slow
def test_smoke_cycle_runs_from_the_installed_wheel(installed):
    """Starts a local Ray (under the flock rule, DEVELOPERS.md): `ray-al-cycle --smoke-test`, as a user runs it."""
    out = installed.run("ray-al-cycle", "--smoke-test", timeout=600).stdout
    (run_dir,) = (installed.work / "runs").iterdir()  # the default run directory, under the working directory
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2] and [r["labels"] for r in rows] == [20, 40, 60]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)
    assert set(rows[0]["seconds"]) == {"train", "embed", "select", "label"}
    assert "area under the learning curve" in out
    from ray_al.run.ledger import Ledger

    ledger = Ledger.load(str(run_dir))
    assert len(ledger) == 60 and len(set(ledger.ids.tolist())) == 60
    assert sorted(set(ledger.rounds.tolist())) == [0, 1, 2]
    assert (run_dir / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    status = installed.run("ray-al-label", "status", run_dir, timeout=120).stdout
    assert re.search(r"^labels\s+60 ", status, re.M) and "committed: [0, 1, 2]" in status
