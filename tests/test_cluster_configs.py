"""Cluster side: launcher YAMLs against Ray's own schema, KubeRay manifests, and a real autoscaler that
adds a (fake) GPU node for a task that needs one and removes it when idle."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import tomllib
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local test clusters: no token auth
import ray  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
LAUNCHER_YAMLS = [CLUSTER / "aws.yaml", CLUSTER / "gcp.yaml"]
KUBERAY = [CLUSTER / "kuberay" / "raycluster.yaml", CLUSTER / "kuberay" / "rayjob.yaml"]
PY_TAG = f"py{sys.version_info.major}{sys.version_info.minor}"
IMAGE = f"rayproject/ray:{ray.__version__}-{PY_TAG}-gpu"


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def pyproject_extras() -> dict[str, list[str]]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]


# ----------------------------------------------------------------------------- launcher YAMLs
@pytest.mark.parametrize("path", LAUNCHER_YAMLS, ids=lambda p: p.name)
def test_launcher_yaml_passes_rays_own_validation(path):
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load(path)
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)  # the schema shipped in the installed wheel
    validate_config(prepare_config(config))  # what `ray up` runs before it talks to the cloud


@pytest.mark.parametrize("path", LAUNCHER_YAMLS, ids=lambda p: p.name)
def test_launcher_gpu_workers_autoscale_from_zero(path):
    config = load(path)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    gpu_types = {n: t for n, t in types.items() if t["resources"].get("GPU", 0) > 0}
    cpu_types = {n: t for n, t in types.items() if n != config["head_node_type"] and n not in gpu_types}
    assert gpu_types and cpu_types, "want CPU and GPU worker types"
    for name, t in {**gpu_types, **cpu_types}.items():
        assert t["min_workers"] == 0, f"{name} must autoscale from 0"
        assert 1 <= t["max_workers"] <= config["max_workers"], name
    assert head["resources"].get("GPU", 0) == 0 and head["resources"].get("CPU") == 0  # no tasks on the head
    assert config["idle_timeout_minutes"] > 0
    # the image must carry the Ray and Python the package is tested with
    assert config["docker"]["image"] == IMAGE


@pytest.mark.parametrize("path", LAUNCHER_YAMLS, ids=lambda p: p.name)
def test_launcher_installs_package_with_faiss_gpu_on_gpu_nodes(path):
    config = load(path)
    extras = pyproject_extras()
    assert "faiss-gpu" in " ".join(extras["gpu"]) and "faiss-cpu" in " ".join(extras["cpu"])
    mount = next(remote for remote, local in config["file_mounts"].items() if local == ".")
    installed_from = mount.replace("~", "$HOME")
    pip_re = re.compile(r'pip install .*-e "?(\S+?)\[(\w+)\]"?')

    def installs(commands: list[str]) -> set[tuple[str, str]]:
        return {m.groups() for c in commands for m in [pip_re.search(c)] if m}

    assert installs(config["setup_commands"]) == {(installed_from, "cpu")}
    for name, t in config["available_node_types"].items():
        if t["resources"].get("GPU", 0):
            # a node type's worker_setup_commands replace the global setup: faiss-gpu only, never both
            assert installs(t["worker_setup_commands"]) == {(installed_from, "gpu")}, name


# ----------------------------------------------------------------------------- KubeRay
def _cluster_spec(doc: dict) -> dict:
    return doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]


def _containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_kuberay_manifest_has_what_kuberay_requires(path):
    doc = load(path)
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] in ("RayCluster", "RayJob")
    assert doc["metadata"]["name"]
    spec = _cluster_spec(doc)
    assert spec["rayVersion"] == ray.__version__ == "2.60.0"
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert [c["image"] for c in _containers(head)] == [IMAGE]
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    gpu = [g for g in groups.values()
           if any(c["resources"]["limits"].get("nvidia.com/gpu") for c in _containers(g))]
    assert len(gpu) == 1 and gpu[0]["minReplicas"] == 0
    for name, g in groups.items():
        assert isinstance(g["rayStartParams"], dict), name
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"] and g["maxReplicas"] >= 1, name
        for c in _containers(g):
            assert c["image"] == IMAGE and c["resources"]["limits"]["cpu"], name
            # Kubernetes schedules GPUs by the limit; the request must not differ
            gpus = c["resources"]["limits"].get("nvidia.com/gpu")
            assert c["resources"]["requests"].get("nvidia.com/gpu") == gpus, name


def test_rayjob_runs_the_cifar10_cycle_with_a_valid_runtime_env():
    doc = load(KUBERAY[1])
    assert doc["spec"]["entrypoint"].startswith("python -m ray_al.cycle --config configs/cifar10.yaml")
    env = yaml.safe_load(doc["spec"]["runtimeEnvYAML"])
    assert set(env) <= {"working_dir", "pip", "env_vars", "py_modules", "excludes"}
    extras = pyproject_extras()
    for requirement in env["pip"]:
        m = re.match(r"ray_al\[(\w+)\] @ (\S+)$", requirement)
        assert m and m.group(1) in extras and m.group(2) == env["working_dir"], requirement
    # cifar10.yaml is CPU-sized: the GPU group can stay at 0 pods for this job
    from ray_al.core import config

    assert config.load(REPO / "configs" / "cifar10.yaml").train.use_gpu is False


# ----------------------------------------------------------------------------- references
_CLUSTER_TEXT_FILES = sorted([*LAUNCHER_YAMLS, *KUBERAY, CLUSTER / "README.md"])


@pytest.mark.parametrize("path", _CLUSTER_TEXT_FILES, ids=lambda p: p.name)
def test_every_referenced_entrypoint_and_config_exists(path):
    text = path.read_text()
    modules = set(re.findall(r"python -m (ray_al(?:\.\w+)*)", text))
    configs = set(re.findall(r"--config (\S+\.yaml)", text))
    if path.suffix == ".md" or path.name == "rayjob.yaml":
        assert modules, f"{path.name} shows no `python -m ray_al...` command"
    for module in modules:
        assert importlib.util.find_spec(module) is not None, f"{path.name}: python -m {module} does not exist"
    for cfg in configs:
        assert (REPO / cfg).is_file(), f"{path.name}: --config {cfg} does not exist"


# ----------------------------------------------------------------------------- the autoscaler itself
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _session_pids(sid: int) -> list[int]:
    """Processes whose session is `sid` (ours: the head was started as a session leader)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) == sid:  # fields after "(comm)": state ppid pgrp session ...
            pids.append(int(entry))
    return pids


class LocalAutoscalingCluster:
    """ray.cluster_utils.AutoscalingCluster, minus what makes it unusable on a shared machine: its
    start() and shutdown() run `ray stop --force` (every Ray process of the user dies, other people's
    included) and its base config file (fake_multi_node/example.yaml) is not shipped in the wheel.

    Same mechanism: `ray start --head --autoscaling-config=...` with RAY_FAKE_CLUSTER=1, so the real
    autoscaler (monitor) launches and terminates node processes through the fake multi-node provider.
    Here the head gets its own ports and temp dir (it never becomes the machine's "current cluster"),
    runs as the leader of a new session, and shutdown() ends exactly the processes of that session.
    """

    def __init__(self, head_resources: dict, worker_node_types: dict, idle_timeout_minutes: float = 0.05):
        self.address = ""
        self.temp_dir = tempfile.mkdtemp(prefix="ral_as_", dir="/tmp")  # short: unix socket paths
        self.head_resources = dict(head_resources)
        self.config = {
            "cluster_name": "ray_al_fake", "max_workers": sum(t["max_workers"] for t in worker_node_types.values()),
            "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                         "disable_launch_config_check": True},  # gcs_address: set by start()
            "available_node_types": {
                **worker_node_types,
                "ray.head.default": {"resources": dict(head_resources), "node_config": {}, "max_workers": 0},
            },
            "head_node_type": "ray.head.default", "auth": {}, "upscaling_speed": 1.0,
            "idle_timeout_minutes": idle_timeout_minutes, "docker": {}, "initialization_commands": [],
            "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [],
            "head_start_ray_commands": [], "worker_start_ray_commands": [], "file_mounts": {},
            "cluster_synced_files": [], "file_mounts_sync_continuously": False, "rsync_exclude": [],
            "rsync_filter": [],
        }
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> None:
        self.port = _free_port()  # fresh on a retry: the old port may linger in TIME_WAIT
        self.address = f"{ray.util.get_node_ip_address()}:{self.port}"
        self.config["provider"]["gcs_address"] = self.address
        Path(self.temp_dir).mkdir(parents=True, exist_ok=True)
        config_path = Path(self.temp_dir) / "autoscaling.json"
        config_path.write_text(json.dumps(self.config))
        resources = dict(self.head_resources)
        cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
               f"--autoscaling-config={config_path}", f"--port={self.port}", f"--temp-dir={self.temp_dir}",
               "--include-dashboard=false", f"--dashboard-port={_free_port()}",
               f"--ray-client-server-port={_free_port()}",
               f"--dashboard-agent-listen-port={_free_port()}", f"--num-cpus={resources.pop('CPU', 0)}",
               f"--num-gpus={resources.pop('GPU', 0)}"]
        if resources:
            cmd.append(f"--resources={json.dumps(resources)}")
        env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
               "RAY_AUTH_MODE": "disabled"}
        env.pop("RAY_ADDRESS", None)
        self.log = open(Path(self.temp_dir) / "head.log", "w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        log_path = Path(self.temp_dir) / "head.log"
        while time.time() < deadline:  # `ray start` prints this once the GCS and the head's raylet are up
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited: {log_path.read_text()[-3000:]}")
            if "Ray runtime started" in log_path.read_text():
                return
            time.sleep(0.5)
        raise TimeoutError(f"the head did not start in {timeout} s: {log_path.read_text()[-3000:]}")

    def shutdown(self) -> None:
        if self.proc is None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            return
        sid = self.proc.pid
        self.proc.send_signal(signal.SIGTERM)  # --block: the head stops its own processes on SIGTERM
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        for _ in range(3):  # what is left of *our* session (fake worker nodes, their workers): by pid
            left = [p for p in _session_pids(sid) if p != os.getpid()]
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if not left:
                break
            time.sleep(0.5)
        self.proc = None
        self.log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


DRIVER = textwrap.dedent("""
    import json, sys, time
    import ray

    for attempt in range(3):  # a loaded machine can make the fresh GCS slow to answer
        try:
            ray.init(address=sys.argv[1], logging_level="ERROR")
            break
        except (ConnectionError, RuntimeError):
            if attempt == 2:
                raise
            time.sleep(5)
    head = ray.get_runtime_context().get_node_id()
    before = [n for n in ray.nodes() if n["Alive"]]

    @ray.remote(num_cpus=1, resources={"fake_gpu": 1})
    def on_gpu_node():
        return ray.get_runtime_context().get_node_id()

    started = time.time()
    node = ray.get(on_gpu_node.remote(), timeout=150)  # pending until the autoscaler adds a node
    upscale_s = time.time() - started
    during = [n for n in ray.nodes() if n["Alive"]]
    deadline = time.time() + 90  # idle_timeout_minutes=0.05: the idle node goes away again
    while time.time() < deadline and len([n for n in ray.nodes() if n["Alive"]]) > 1:
        time.sleep(1)
    after = [n for n in ray.nodes() if n["Alive"]]
    print("RESULT " + json.dumps({
        "head": head, "task_node": node, "upscale_s": upscale_s,
        "before": [n["Resources"] for n in before], "during": [n["Resources"] for n in during],
        "after": len(after)}))
""")


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_autoscaler_adds_a_worker_for_a_gpu_task_and_removes_it_when_idle(tmp_path):
    cluster = LocalAutoscalingCluster(
        head_resources={"CPU": 1},
        # "fake_gpu" stands in for GPU: the autoscaler treats custom resources the same way
        worker_node_types={"gpu_worker": {"resources": {"CPU": 1, "fake_gpu": 1}, "node_config": {},
                                          "min_workers": 0, "max_workers": 2}},
    )
    try:
        try:
            cluster.start()
        except (RuntimeError, TimeoutError):  # Ray gives a raylet 30 s to register: a busy machine can miss it
            cluster.shutdown()
            cluster.start()
        (tmp_path / "driver.py").write_text(DRIVER)
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        out = subprocess.run([sys.executable, str(tmp_path / "driver.py"), cluster.address], env=env, check=False,
                             capture_output=True, text=True, timeout=300)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
        assert lines, f"driver failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        result = json.loads(lines[-1][len("RESULT "):])
    finally:
        cluster.shutdown()
    assert len(result["before"]) == 1 and "fake_gpu" not in result["before"][0]  # min_workers 0: head only
    assert result["task_node"] != result["head"]  # ran on a node that did not exist when it was submitted
    assert len(result["during"]) == 2 and any(r.get("fake_gpu") == 1 for r in result["during"])
    assert result["after"] == 1, "the idle worker node was not removed"
