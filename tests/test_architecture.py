"""The layering of ray_al, read from the source (AST only: no imports, no Ray).

(a) no import cycles (module- and function-level imports; an import that only goes through a package
    __init__'s re-export counts as an import of the module that defines the name);
(b) the pure parts never import ray, directly or through the modules they import;
(c) nothing imports the command lines (cycle, sweep, label, data.__main__);
(d) no function outside ray_al/bench/ is longer than MAX_FUNCTION_LINES, except LONG_FUNCTIONS;
(e) every module sits in one layer (LAYERS, by package) and imports only its own layer and the ones below;
(f) no class is longer than MAX_CLASS_LINES, and the round loop's `Cycle` (which only orders stages) is
    shorter than MAX_CYCLE_LINES;
(g) no function outside ray_al/bench/ takes more than MAX_PARAMETERS parameters (self and cls not
    counted).
"""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ray_al"

# The layers, bottom first, by package (docs/ARCHITECTURE.md): a module may import its own layer and those
# below it, never one above. A package means every module in it; a module name means that module only.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("pure building blocks", ("ray_al.core",)),
    ("pure learners and selectors", ("ray_al.ssl", "ray_al.models", "ray_al.acquisition")),
    ("run state", ("ray_al.run",)),
    ("pool sources and Ray workers", ("ray_al.data", "ray_al.workers")),
    ("the round loop", ("ray_al.loop",)),
    ("command lines", ("ray_al.cli", "ray_al.cycle", "ray_al.sweep", "ray_al.label", "ray_al.data.__main__", "ray_al.api")),
)
PURE = ("ray_al.core", "ray_al.ssl", "ray_al.models", "ray_al.acquisition")  # never import ray
CLIS = ("ray_al.cycle", "ray_al.sweep", "ray_al.label", "ray_al.data.__main__")
SIDE = ("ray_al", "ray_al.bench")  # the package root and the benchmarks sit beside the layers
MAX_FUNCTION_LINES = 60
# "path:function" -> why it may be longer; keep it short
LONG_FUNCTIONS: dict[str, str] = {}
MAX_CLASS_LINES = 200
MAX_CYCLE_LINES = 150  # ray_al.loop.rounds.Cycle must stay under this
MAX_PARAMETERS = 8


# ----------------------------------------------------------------------------------------------
# reading the package


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@lru_cache(maxsize=None)
def modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


@lru_cache(maxsize=None)
def tree(name: str) -> ast.Module:
    return ast.parse(modules()[name].read_text(), filename=str(modules()[name]))


def _is_package(name: str) -> bool:
    return modules()[name].name == "__init__.py"


def _type_checking_only(mod: ast.Module) -> set[int]:
    """ids of the import nodes under `if TYPE_CHECKING:` (never run)."""
    out = set()
    for node in ast.walk(mod):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            out |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return out


def imports(name: str, module_level_only: bool = False) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every import statement that runs in `name`."""
    mod = tree(name)
    skip = _type_checking_only(mod)
    nodes = _import_time_nodes(mod) if module_level_only else list(ast.walk(mod))
    out = []
    for node in nodes:
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(alias.name, None, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_relative(name, node)
            out += [(base, alias.name, node.lineno) for alias in node.names]
    return out


def _import_time_nodes(node: ast.AST) -> list[ast.AST]:
    """The nodes that run when the module is imported: everything but function bodies."""
    out = []
    for child in ast.iter_child_nodes(node):
        out.append(child)
        if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            out += _import_time_nodes(child)
    return out


def _resolve_relative(name: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = name if _is_package(name) else name.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def defining_module(package: str, attr: str, seen: frozenset = frozenset()) -> str:
    """The module `from package import attr` really depends on: the submodule `attr`, or the module a
    package __init__ re-exports `attr` from, or the package itself."""
    if f"{package}.{attr}" in modules():
        return f"{package}.{attr}"
    if package in modules() and _is_package(package) and package not in seen:
        for target, imported, _ in imports(package, module_level_only=True):
            if imported == attr and target.startswith("ray_al"):
                return defining_module(target, attr, seen | {package})
    return package


def internal_edges(name: str, module_level_only: bool = False) -> dict[str, int]:
    """ray_al modules `name` imports -> first line."""
    out: dict[str, int] = {}
    for target, attr, line in imports(name, module_level_only):
        if not (target == "ray_al" or target.startswith("ray_al.")):
            continue
        dep = defining_module(target, attr) if attr else target
        if dep in modules() and dep != name:
            out.setdefault(dep, line)
    return out


def _is_pure(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in PURE)


# ----------------------------------------------------------------------------------------------
# (a) cycles


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (as a path a -> ... -> a) per strongly connected component with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan; the package is small enough for recursion
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_path(graph, set(comp)) for comp in components]


def _cycle_path(graph: dict[str, dict[str, int]], comp: set[str]) -> list[str]:
    """A shortest cycle through the alphabetically first module of the component (breadth-first)."""
    start = min(comp)
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [start] + path[::-1][1:] + [start] if len(path) > 1 else [start, v, start]
                if w in comp and w not in parent:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    return sorted(comp)


def _describe(graph: dict[str, dict[str, int]], path: list[str]) -> str:
    return " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(path, path[1:])) + f" -> {path[-1]}"


def test_no_import_cycles() -> None:
    graph = {name: internal_edges(name) for name in modules()}
    cycles = [_describe(graph, c) for c in _cycles(graph)]
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_cycle_finder_finds_a_planted_cycle() -> None:
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3, "d": 4}, "d": {}}
    assert _cycles(graph) == [["a", "b", "c", "a"]]
    assert _describe(graph, ["a", "b", "c", "a"]) == "a (line 1) -> b (line 2) -> c (line 3) -> a"


# ----------------------------------------------------------------------------------------------
# (b) pure modules


def _ray_import(name: str, module_level_only: bool) -> int | None:
    for target, _, line in imports(name, module_level_only):
        if target == "ray" or target.startswith("ray."):
            return line
    return None


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in modules()]


def ray_path(start: str) -> list[str] | None:
    """How importing `start` (or calling its functions) reaches `import ray`, or None. Pure modules are
    followed through every import (their functions run in the pure layer); other modules only through
    what runs at import time (module level, and their parent packages)."""
    parent: dict[str, str | None] = {start: None}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            everywhere = _is_pure(v)
            line = _ray_import(v, module_level_only=not everywhere)
            if line is not None:
                path = [f"ray ({v}:{line})"]
                while v is not None:
                    path.append(v)
                    v = parent[v]
                return path[::-1]
            for w in [*internal_edges(v, module_level_only=not everywhere), *_parents(v)]:
                if w not in parent:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    return None


def test_ray_path_sees_an_import_of_ray() -> None:
    path = ray_path("ray_al.workers.kcenter_shards")  # the Ray plumbing of k-center: a positive control
    assert path is not None and path[-1].startswith("ray (ray_al.workers.kcenter_shards:")


@pytest.mark.parametrize("name", sorted(n for n in modules() if _is_pure(n)))
def test_pure_modules_never_import_ray(name: str) -> None:
    path = ray_path(name)
    assert path is None, f"{name} imports ray: " + " -> ".join(path)


# ----------------------------------------------------------------------------------------------
# (c) nothing imports the command lines


def test_nothing_imports_the_command_lines() -> None:
    bad = set()
    for name in modules():
        for target, attr, line in imports(name):
            dep = defining_module(target, attr) if attr else target
            if (target in CLIS or dep in CLIS) and dep != name:
                bad.add(f"{modules()[name].relative_to(ROOT)}:{line} imports {dep}")
    bad = sorted(bad)
    assert not bad, "the command lines are entry points, not libraries (import the loop module instead):\n" + "\n".join(bad)


# ----------------------------------------------------------------------------------------------
# (d) function length


def long_functions() -> dict[str, int]:
    out = {}
    for name, path in modules().items():
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("ray_al/bench/"):
            continue
        for node in ast.walk(tree(name)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    out[f"{rel}:{node.name}"] = lines
    return out


def test_no_long_functions() -> None:
    found = long_functions()
    too_long = {k: v for k, v in found.items() if k not in LONG_FUNCTIONS}
    assert not too_long, f"functions over {MAX_FUNCTION_LINES} lines (split them or add a reason to LONG_FUNCTIONS): {too_long}"
    stale = sorted(set(LONG_FUNCTIONS) - set(found))
    assert not stale, f"LONG_FUNCTIONS entries that are short now (remove them): {stale}"


# ----------------------------------------------------------------------------------------------
# (e) layers by package


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layer_of(name: str) -> int | None:
    """Index into LAYERS of the most specific prefix that holds `name` (None: beside the layers)."""
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if _within(name, prefix) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), index)
    return None if best is None else best[1]


def test_every_module_sits_in_a_layer() -> None:
    loose = sorted(n for n in modules() if layer_of(n) is None and n not in SIDE and not _within(n, "ray_al.bench"))
    assert not loose, f"modules in no layer (move them into a layer's package, or add the package to LAYERS): {loose}"


def upward_imports(graph: dict[str, dict[str, int]]) -> list[str]:
    bad = []
    for name, deps in graph.items():
        mine = layer_of(name)
        for dep, line in deps.items():
            theirs = layer_of(dep)
            if mine is not None and theirs is not None and theirs > mine:
                bad.append(f"{name}:{line} ({LAYERS[mine][0]}) imports {dep} ({LAYERS[theirs][0]})")
    return sorted(bad)


def test_no_module_imports_a_layer_above_its_own() -> None:
    bad = upward_imports({name: internal_edges(name) for name in modules()})
    assert not bad, "upward imports (move the shared code down a layer):\n" + "\n".join(bad)


def test_upward_import_check_sees_a_planted_one() -> None:
    assert upward_imports({"ray_al.core.ids": {"ray_al.loop.rounds": 7}}) == [
        "ray_al.core.ids:7 (pure building blocks) imports ray_al.loop.rounds (the round loop)"]
    assert layer_of("ray_al.data.__main__") == len(LAYERS) - 1 and layer_of("ray_al.data.pool") == 3


# ----------------------------------------------------------------------------------------------
# (f) class length


def class_lengths(mods: dict[str, ast.Module]) -> dict[str, int]:
    """"path:Class" -> lines, for every class in `mods` (path -> parsed module)."""
    return {f"{rel}:{node.name}": node.end_lineno - node.lineno + 1
            for rel, mod in mods.items() for node in ast.walk(mod) if isinstance(node, ast.ClassDef)}


def _package_trees() -> dict[str, ast.Module]:
    return {path.relative_to(ROOT).as_posix(): tree(name) for name, path in modules().items()}


def test_no_long_classes() -> None:
    lengths = class_lengths(_package_trees())
    too_long = {k: v for k, v in lengths.items() if v > MAX_CLASS_LINES}
    assert not too_long, f"classes over {MAX_CLASS_LINES} lines (move a job into its own object): {too_long}"


def test_the_cycle_only_orders_stages() -> None:
    lines = class_lengths(_package_trees())["ray_al/loop/rounds.py:Cycle"]
    assert lines < MAX_CYCLE_LINES, (f"Cycle is {lines} lines: it orders the stages; their work belongs in the "
                                     "backend (loop/backend.py), the run's features (loop/features.py) or selection")


def test_class_length_check_sees_a_planted_long_class() -> None:
    planted = ast.parse("class Big:\n" + "    x = 1\n" * (MAX_CLASS_LINES + 1) + "class Small:\n    pass\n")
    assert class_lengths({"p.py": planted}) == {"p.py:Big": MAX_CLASS_LINES + 2, "p.py:Small": 2}


# ----------------------------------------------------------------------------------------------
# (g) parameters per function


def parameter_counts(mods: dict[str, ast.Module]) -> dict[str, int]:
    """"path:function" -> its parameters (positional, keyword-only, *args, **kwargs; not self or cls), for
    every function in `mods` outside ray_al/bench/."""
    out = {}
    for rel, mod in mods.items():
        if not rel.startswith("ray_al/bench/"):
            for name, node in _functions(mod):
                a = node.args
                names = [p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg) if p]
                out[f"{rel}:{name}"] = len([n for n in names if n not in ("self", "cls")])
    return out


def _functions(node: ast.AST, prefix: str = ""):
    """(qualified name, node) of every function under `node`: Class.method, outer.inner."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = prefix + child.name
            if not isinstance(child, ast.ClassDef):
                yield name, child
            yield from _functions(child, name + ".")
        else:
            yield from _functions(child, prefix)


def test_no_function_takes_too_many_parameters() -> None:
    wide = {k: v for k, v in parameter_counts(_package_trees()).items() if v > MAX_PARAMETERS}
    assert not wide, (f"functions with over {MAX_PARAMETERS} parameters (pass a dataclass, e.g. "
                      f"workers.train.TrainRequest or acquisition.kcenter_greedy.KCenterOptions): {wide}")


def test_parameter_check_sees_a_planted_wide_function() -> None:
    planted = ast.parse("def wide(a, b, c, d, e, f, g, *h, i, **j): pass\n"
                        "class K:\n    def m(self, a, b, c, d, e, f, g, h): pass\n")
    assert parameter_counts({"ray_al/p.py": planted}) == {"ray_al/p.py:wide": 10, "ray_al/p.py:K.m": 8}
    assert parameter_counts({"ray_al/bench/p.py": planted}) == {}  # benchmarks may take their knobs
