"""The Python API (ray_al/api.py): `ray_al.select` on bare arrays, `ray_al.run`, `__version__`, the README's
examples run verbatim, and `import ray_al` stays light (no Ray, no torch)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

import ray_al
from ray_al import acquisition
from ray_al.core.config import ConfigError

REPO = Path(__file__).resolve().parents[1]


def readme_blocks(heading: str = "## Python API") -> list[str]:
    """The ```python blocks of one README section, verbatim."""
    text = (REPO / "README.md").read_text()
    section = text[text.index(heading):]
    section = section[:section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def python(code: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout,
                          cwd=REPO)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(120, 6)).astype(np.float32)
    probs = rng.dirichlet(np.ones(4), size=120)
    return emb, probs


@pytest.mark.parametrize("method", ["typiclust", "probcover", "kcenter", "random"])
def test_select_works_on_a_bare_matrix_without_probs(data, method):
    emb, _ = data
    picks = ray_al.select(emb, [0, 5, 7], 9, method=method, seed=1)
    assert picks.shape == (9,) and len(set(picks.tolist())) == 9
    assert not set(picks.tolist()) & {0, 5, 7} and picks.min() >= 0 and picks.max() < 120
    assert np.array_equal(picks, ray_al.select(emb, [0, 5, 7], 9, method=method, seed=1))  # seeded


def test_select_equals_the_acquisition_function_on_the_unlabeled_rows(data):
    emb, probs = data
    labeled = np.array([3, 4, 50])
    unl = np.setdiff1d(np.arange(120), labeled)
    view = acquisition.PoolView(ids=unl, probs=probs[unl], embeddings=emb[unl], labeled_embeddings=emb[labeled])
    for method in ("kcenter", "margin", "entropy"):
        want = unl[acquisition.select(method, view, 7, seed=2)]
        assert np.array_equal(ray_al.select(emb, labeled, 7, method=method, probs=probs, seed=2), want), method


def test_select_with_ids_and_a_mask(data):
    emb, probs = data
    ids = np.array([f"img-{i:03d}" for i in range(120)])
    by_id = ray_al.select(emb, ["img-003", "img-004"], 5, method="kcenter", ids=ids)
    by_pos = ray_al.select(emb, [3, 4], 5, method="kcenter")
    assert by_id.tolist() == ids[by_pos].tolist()
    mask = np.zeros(120, bool)
    mask[[3, 4]] = True
    assert np.array_equal(ray_al.select(emb, mask, 5, method="kcenter"), by_pos)


def test_select_auto_follows_the_policy(data):
    emb, probs = data
    cold = ray_al.select(emb, [], 4)  # no labels: typiclust
    assert np.array_equal(cold, ray_al.select(emb, [], 4, method="typiclust"))
    labeled = np.arange(16)  # the fixed rule: 4 per class of 4 classes >= 3: margin
    late = ray_al.select(emb, labeled, 4, probs=probs, labels=np.repeat(np.arange(4), 4), switch_per_class=3)
    assert np.array_equal(late, ray_al.select(emb, labeled, 4, method="margin", probs=probs))
    # the data rule reads the model's mean top-class probability on the unlabeled rows (0.8 switches)
    from ray_al.acquisition.policy import DATA_RULE

    unlabeled = np.setdiff1d(np.arange(len(emb)), labeled)
    confident = float(probs[unlabeled].max(axis=1).mean()) >= DATA_RULE.threshold
    want = ray_al.select(emb, labeled, 4, method="margin" if confident else "typiclust", probs=probs)
    assert np.array_equal(ray_al.select(emb, labeled, 4, probs=probs), want)
    sure = np.full_like(probs, 0.02)
    sure[np.arange(len(sure)), probs.argmax(axis=1)] = 1 - 0.02 * (probs.shape[1] - 1)
    assert np.array_equal(ray_al.select(emb, labeled, 4, probs=sure), ray_al.select(emb, labeled, 4, method="margin",
                                                                                    probs=sure))
    # labeled rows but no probabilities: typiclust, as for a user's own embeddings
    assert np.array_equal(ray_al.select(emb, [0, 1], 3), ray_al.select(emb, [0, 1], 3, method="typiclust"))


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(method="entropy"), r"method 'entropy' needs probs.*kcenter, probcover, random, typiclust"),
    (dict(method="badge"), r"method 'badge' needs probs"),
    (dict(method="kcenter", prefilter="margin"), r"method 'kcenter' needs probs"),
    (dict(method="no-such"), r"no-such"),
    (dict(labeled=[0, 0]), r"labeled lists rows twice: positions \[0\]"),
    (dict(labeled=[120]), r"labeled positions outside 0..119: \[120\]"),
    (dict(labeled=[0.5]), r"integer row positions"),
    (dict(labeled=np.zeros(3, bool)), r"boolean labeled mask must have one entry per embedding row \(120\)"),
    (dict(budget=119), r"budget must be an integer in 0..118"),
    (dict(budget=-1), r"budget must be an integer"),
    (dict(budget=2.0), r"budget must be an integer"),
    (dict(embeddings=np.zeros(5)), r"embeddings must be a 2-D numeric array"),
    (dict(probs=np.full((3, 4), 0.25)), r"probs has 3 rows but embeddings has 120"),
    (dict(method="margin", probs=np.full((120, 4), 0.5)), r"not valid class probabilities.*rows not summing to 1"),
    (dict(ids=np.arange(5)), r"ids must be 1-D with one id per embedding row \(120\)"),
    (dict(ids=np.zeros(120, int)), r"ids must be unique; repeated: \[0\]"),
    (dict(ids=np.arange(120) + 1000, labeled=[5]), r"labeled ids not in ids: \[5\]"),
    (dict(method="auto", labeled=[0, 1], switch_per_class=3), r"method='auto' needs the number of classes"),
    (dict(labels=[1]), r"labels must be 2 integer classes"),
    (dict(method="kcenter", unknown_option=1), r"unknown option\(s\) \['unknown_option'\]"),
])
def test_select_refuses_bad_input(data, kwargs, pattern):
    emb, _ = data
    args = {"embeddings": emb, "labeled": [0, 1], "budget": 3, "method": "kcenter", **kwargs}
    with pytest.raises(ValueError, match=pattern):
        ray_al.select(**args)


def test_import_is_light_and_select_needs_no_ray_or_torch():
    code = ("import sys, numpy as np, ray_al\n"
            "assert callable(ray_al.run) and ray_al.__version__\n"
            "heavy = [m for m in ('ray', 'torch', 'torchvision', 'pandas') if m in sys.modules]\n"
            "ray_al.select(np.random.default_rng(0).normal(size=(50, 4)), [1], 5, method='typiclust')\n"
            "ray_al.select(np.random.default_rng(0).normal(size=(50, 4)), [1], 5, method='kcenter')\n"
            "after = [m for m in ('ray', 'torch') if m in sys.modules]\n"
            "print(ray_al.__file__, heavy, after)\n")
    p = python(code)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == f"{REPO / 'ray_al' / '__init__.py'} [] []"


def test_run_stays_callable_after_the_run_state_package_is_imported():
    import ray_al.run.ledger  # noqa: F401  binds ray_al.run to the subpackage: still the API

    assert callable(ray_al.run) and ray_al.run.ledger.Ledger


def test_version_is_written_once_and_read_by_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "ray_al.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", ray_al.__version__)


@pytest.mark.parametrize("config, overrides, pattern", [
    ({"al": {"no_key": 1}}, {}, r"unknown config key 'al.no_key'"),
    ({"nope": {}}, {}, r"unknown config section 'nope'"),
    (None, {"al": 3}, r"override al= must be a mapping"),
])
def test_run_refuses_bad_config_before_starting_anything(tmp_path, config, overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        ray_al.run(config, run_dir=str(tmp_path / "r"), **overrides)
    assert not (tmp_path / "r").exists()
    with pytest.raises(TypeError, match="takes a YAML path, a dict of sections or a Config"):
        ray_al.run(3)


def test_readme_select_example_runs_verbatim():
    (block, _) = readme_blocks()
    assert "ray_al.select(" in block
    p = python(block)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 3 and lines[2] == ray_al.__version__
    assert len(lines[0].strip("[]").split()) == 10 and len(lines[1].strip("[]").split()) == 5


@pytest.mark.slow
def test_readme_run_example_runs_verbatim(tmp_path):
    """Starts Ray: run under the flock rule (DEVELOPERS.md). The README's smoke cycle, from tmp_path."""
    (_, block) = readme_blocks()
    assert "ray_al.run(" in block
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, env=env, timeout=900,
                       cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    rounds = eval(p.stdout.strip().splitlines()[-1])  # the example's last line: [(round, labels, accuracy)]
    assert [r for r, _, _ in rounds] == [0, 1, 2] and all(0.0 <= acc <= 1.0 for _, _, acc in rounds)
    assert (tmp_path / "runs" / "api-smoke" / "results.jsonl").is_file()
