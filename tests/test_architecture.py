"""The package's import rules, read from the source (no module is imported):

* no import cycles between the modules of ``freesel_backend`` (imports inside functions count);
* no ``_private`` name of one module imported or used by another, nor a ``_private`` attribute
  that the module itself does not define (``store._key(...)`` outside the store);
* ``engine`` imports nothing of ours outside ``engine``, and none of Label Studio's SDK, Flask,
  Redis or RQ: it stays usable on its own;
* ``labelstudio`` imports nothing of ``server`` nor of ``engine`` (the two are siblings);
* nothing below the command line imports ``cli`` (only ``python -m freesel_backend`` runs it);
* the write-out's plan (``server/writeout/plan.py``) imports nothing of ours, Redis or RQ: it is pure;
* only the store touches Redis itself (no ``.redis`` attribute elsewhere), and only ``server/enqueue.py``
  looks into RQ's job registries;
* nothing imports ``label_studio_ml`` (its 1.0.9 release pins Flask 1.1.2 and Werkzeug 2.0.2): the
  web service serves Label Studio's ML backend protocol itself.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterator

import pytest

PACKAGE = "freesel_backend"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE
SERVICE_LIBRARIES = ("label_studio_ml", "flask", "redis", "rq")
WRITEOUT_PLAN = f"{PACKAGE}.server.writeout.plan"
CLI = f"{PACKAGE}.cli"


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(path: Path, root: Path) -> str:
    name = module_name(path, root)
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def absolute(node: ast.ImportFrom, path: Path, root: Path) -> str:
    """The module an ``import from`` names, with relative imports resolved."""
    if node.level == 0:
        return node.module or ""
    base = package_of(path, root).split(".")
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


class Imports:
    """What one module imports: modules (ours and others') and the names it takes from ours."""

    def __init__(self, path: Path, root: Path, modules: set[str]) -> None:
        self.path, self.name = path, module_name(path, root)
        self.modules: set[str] = set()  # every module it imports, ours resolved to their file's module
        self.names: list[tuple[str, str]] = []  # (our module, name) for `from ours import name`
        self.attributes: list[tuple[str, str]] = []  # (our module, name) for `ours_alias.name`
        aliases: dict[str, str] = {}
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    self.modules.add(alias.name)
                    if alias.asname and alias.name in modules:
                        aliases[alias.asname] = alias.name
            elif isinstance(node, ast.ImportFrom):
                source = absolute(node, path, root)
                for alias in node.names:
                    submodule = f"{source}.{alias.name}"
                    if submodule in modules:  # `from package import module`
                        self.modules.add(submodule)
                        aliases[alias.asname or alias.name] = submodule
                    else:
                        self.modules.add(source)
                        if source in modules:
                            self.names.append((source, alias.name))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
                self.attributes.append((aliases[node.value.id], node.attr))
        defined = set(defined_names(tree))
        self.redis_uses = sorted(
            {(node.lineno, ast.unparse(node)) for node in ast.walk(tree)
             if isinstance(node, ast.Attribute) and node.attr == "redis"}
        )
        self.registry_uses = sorted(
            {(node.lineno, f"from {node.module} import {alias.name}") for node in ast.walk(tree)
             if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "rq"
             for alias in node.names if alias.name.endswith("Registry") or node.module == "rq.registry"}
            | {(node.lineno, ast.unparse(node)) for node in ast.walk(tree)
               if isinstance(node, ast.Attribute) and node.attr.endswith("_registry")}
        )
        self.foreign_privates = sorted(
            {(node.lineno, ast.unparse(node)) for node in ast.walk(tree)
             if isinstance(node, ast.Attribute) and is_private(node.attr) and node.attr not in defined}
        )

    def ours(self, modules: set[str]) -> set[str]:
        return {m for m in self.modules if m in modules and m != self.name}


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def defined_names(tree: ast.AST) -> Iterator[str]:
    """Names the module defines: functions, classes, arguments, assigned names and attributes."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield node.name
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            yield node.id
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            yield node.attr
        elif isinstance(node, ast.arg):
            yield node.arg


def read_package(root: Path = ROOT) -> dict[str, Imports]:
    paths = sorted(root.rglob("*.py"))
    modules = {module_name(path, root) for path in paths}
    return {module_name(path, root): Imports(path, root, modules) for path in paths}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected group of modules (Tarjan), each as a path back to its start."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(path_within(graph, set(group), node))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def path_within(graph: dict[str, set[str]], group: set[str], start: str) -> list[str]:
    """A cycle through ``start`` inside ``group`` (breadth-first, so a shortest one)."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for successor in sorted(graph[node] & group):
                if successor == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if successor not in previous:
                    previous[successor] = node
                    following.append(successor)
        frontier = following
    return [start]


def import_cycles(package: dict[str, Imports]) -> list[str]:
    modules = set(package)
    graph = {name: imports.ours(modules) for name, imports in package.items()}
    return [" -> ".join(cycle) for cycle in cycles(graph)]


def private_reaches(package: dict[str, Imports]) -> list[str]:
    """Private names used across modules, and private attributes a module does not define itself."""
    reaches = [
        f"{name}: {source}.{attribute}"
        for name, imports in package.items()
        for source, attribute in imports.names + imports.attributes
        if source != name and is_private(attribute)
    ]
    reaches += [
        f"{name}: {expression}" for name, imports in package.items() for _, expression in imports.foreign_privates
    ]
    return sorted(set(reaches))


def forbidden_imports(package: dict[str, Imports]) -> list[str]:
    found = []
    for name, imports in package.items():
        if name.startswith(f"{PACKAGE}.engine"):
            for module in imports.modules:
                if module.startswith(PACKAGE) and not module.startswith(f"{PACKAGE}.engine"):
                    found.append(f"{name} imports {module}: the engine imports nothing of ours outside engine")
                if module.split(".")[0] in SERVICE_LIBRARIES:
                    found.append(f"{name} imports {module}: the engine runs without Label Studio, Flask, Redis or RQ")
        if name.startswith(f"{PACKAGE}.labelstudio"):
            found += [f"{name} imports {module}: labelstudio sits below server"
                      for module in imports.modules if module.startswith(f"{PACKAGE}.server")]
            found += [f"{name} imports {module}: labelstudio and engine are siblings"
                      for module in imports.modules if module.startswith(f"{PACKAGE}.engine")]
        if not in_package(name, CLI) and name != f"{PACKAGE}.__main__":
            found += [f"{name} imports {module}: only the command line imports cli"
                      for module in imports.modules if in_package(module, CLI)]
        if name == WRITEOUT_PLAN:
            found += [f"{name} imports {module}: the write-out's plan is pure" for module in imports.modules
                      if module.startswith(PACKAGE) or module.split(".")[0] in SERVICE_LIBRARIES]
        found += [f"{name} imports {module}: the web service serves the protocol itself, on maintained Flask releases"
                  for module in imports.modules if module.split(".")[0] == "label_studio_ml"]
    return sorted(found)


def in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(f"{package}.")


STORE = f"{PACKAGE}.server.store"
ENQUEUE = f"{PACKAGE}.server.enqueue"


def service_reaches(package: dict[str, Imports]) -> list[str]:
    """Redis used outside the store, and RQ's job registries looked into outside enqueue."""
    found = [f"{name}:{line}: {expression}: only the store touches Redis"
             for name, imports in package.items() if name != STORE for line, expression in imports.redis_uses]
    found += [f"{name}:{line}: {expression}: only enqueue looks into RQ's registries"
              for name, imports in package.items() if name != ENQUEUE for line, expression in imports.registry_uses]
    return sorted(found)


@pytest.fixture(scope="module")
def package() -> dict[str, Imports]:
    return read_package()


def test_the_package_has_no_import_cycle(package):
    assert import_cycles(package) == []


def test_no_module_uses_another_modules_private_names(package):
    assert private_reaches(package) == []


def test_the_engine_and_the_label_studio_layer_import_only_downwards(package):
    assert forbidden_imports(package) == []


def test_only_the_store_touches_redis_and_only_enqueue_reads_rq_registries(package):
    assert service_reaches(package) == []


def test_the_checks_find_each_kind_of_violation(tmp_path):
    """A small package with one violation of each rule: every one is reported."""
    files = {
        "__init__.py": "",
        "engine/__init__.py": "",
        "engine/pure.py": "import redis\nfrom ..server import jobs\n",
        "labelstudio/__init__.py": "",
        "labelstudio/client.py": "from ..server.store import Store\nfrom ..engine import pure\n",
        "server/__init__.py": "",
        "server/store.py": "class Store:\n    def _key(self):\n        return self.redis.get('k')\n",
        "server/jobs.py": "from . import publish\nfrom .store import Store\nkey = Store()._key()\n",
        "server/publish.py": "from .jobs import _context\n\n\ndef forget(step):\n    step.store.redis.hdel('k')\n",
        "server/admin.py": (
            "from rq.registry import FailedJobRegistry\n\n\n"
            "def retries(queue):\n    return queue.scheduled_job_registry\n"
        ),
        "server/enqueue.py": "from rq.registry import StartedJobRegistry\n",
        "server/writeout/__init__.py": "",
        "server/writeout/plan.py": "import bisect\n\nfrom ..store import Store\n",
        "server/web.py": "from label_studio_ml.api import init_app\n",
        "server/process.py": "from ..cli.backend_client import BackendClient\n",
        "cli/__init__.py": "from .serve import add_serve_command\n",
        "cli/serve.py": "from ..server import process\n",
    }
    for name, text in files.items():
        (tmp_path / PACKAGE / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / PACKAGE / name).write_text(text)
    package = read_package(tmp_path / PACKAGE)
    server = f"{PACKAGE}.server"
    assert import_cycles(package) == [f"{server}.jobs -> {server}.publish -> {server}.jobs"]
    assert private_reaches(package) == [f"{server}.jobs: Store()._key", f"{server}.publish: {server}.jobs._context"]
    assert forbidden_imports(package) == [
        f"{PACKAGE}.engine.pure imports {server}.jobs: the engine imports nothing of ours outside engine",
        f"{PACKAGE}.engine.pure imports redis: the engine runs without Label Studio, Flask, Redis or RQ",
        f"{PACKAGE}.labelstudio.client imports {PACKAGE}.engine.pure: labelstudio and engine are siblings",
        f"{PACKAGE}.labelstudio.client imports {server}.store: labelstudio sits below server",
        f"{server}.process imports {PACKAGE}.cli.backend_client: only the command line imports cli",
        f"{server}.web imports label_studio_ml.api: the web service serves the protocol itself, on maintained "
        "Flask releases",
        f"{server}.writeout.plan imports {server}.store: the write-out's plan is pure",
    ]
    assert service_reaches(package) == [
        f"{server}.admin:1: from rq.registry import FailedJobRegistry: only enqueue looks into RQ's registries",
        f"{server}.admin:5: queue.scheduled_job_registry: only enqueue looks into RQ's registries",
        f"{server}.publish:5: step.store.redis: only the store touches Redis",
    ]
