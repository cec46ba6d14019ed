"""Architecture: bitsnb's own imports run one way (issue 12, item 2).

Every ``.py`` file of ``bitsnb/`` is read with ``ast`` (nothing is imported). Each import of a
bitsnb module becomes an edge of a graph, wherever it stands: at module level, inside a function,
under ``if TYPE_CHECKING:``, or as ``importlib.import_module("bitsnb.x")`` with a constant name.
A ``TYPE_CHECKING`` import runs no code, but it still ties the two modules together: a layer that
needs the types of an outer one should type against a protocol instead.

The checks are plain functions over that graph (or over source text), so the unit tests at the
end can feed them made-up packages and prove that each one reports what it should:

- no cycles (Tarjan's strongly connected components; a package's ``__init__`` importing its own
  submodules and a submodule importing its package's ``__init__`` are edges like any other);
- layers: a module imports only from its own layer or lower ones (``LAYERS``, most-outer first);
- no private name taken from another module (``from .x import _y``, ``x._y``);
- the core (every layer below the front ends) imports neither widgets, IPython nor pandas.

What ``import bitsnb`` puts in ``sys.modules`` is checked by a subprocess elsewhere:
``tests/test_api.py::test_import_is_light`` (pandas, ipywidgets) and
``tests/test_helpers.py::test_helpers_import_is_light`` (``import bitsnb.helpers``, which runs
``bitsnb/__init__`` first: pandas, IPython, ipywidgets, nest_asyncio2), so it is not repeated here.
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import bitsnb

#: Most-outer layer first. A module may import from its own layer and the ones below it. A listed
#: package's submodules inherit its layer, except for the top package itself: ``bitsnb`` (its
#: ``__init__``, which re-exports everything) is a front end, its submodules are classified one by
#: one. Names listed in advance for the split of ``_manager`` need not exist yet.
LAYERS: dict[str, tuple[str, ...]] = {
    "front ends": (
        "bitsnb",
        "bitsnb.__main__",
        "bitsnb._checksums",
        "bitsnb._cli",
        "bitsnb._cli_args",
        "bitsnb._cli_jobs",
        "bitsnb._cli_parser",
        "bitsnb._cli_run",
        "bitsnb._cli_demo",
        "bitsnb._cli_integrity",
        "bitsnb._cli_render",
        "bitsnb._cli_output",
        "bitsnb._cli_watch",
        "bitsnb.distributed",
        "bitsnb.frames",
        "bitsnb.helpers",
        "bitsnb._helpers_download",
        "bitsnb._helpers_explain",
        "bitsnb._helpers_files",
        "bitsnb._helpers_manager",
        "bitsnb.notebook",
        "bitsnb.server",
        "bitsnb.server._answers",
        "bitsnb.server._asgi",
        "bitsnb.server._replies",
        "bitsnb.server._writing",
        "bitsnb.testing",
        "bitsnb.testing._bodies",  # the packages' submodules inherit their layer; the new ones
        "bitsnb.testing._content",  # of the split of _server.py and _app.py are named anyway
        "bitsnb.testing._digests",
        "bitsnb.testing._requests",
        "bitsnb.testing._wire",
    ),
    "blocking API": (
        "bitsnb._sync",
        "bitsnb._syncbridge",
        "bitsnb._syncnotify",
        "bitsnb._viewhooks",
    ),
    "core": (
        "bitsnb._manager",
        "bitsnb._job",
        "bitsnb._jobtyped",
        "bitsnb._scheduler",
        "bitsnb._jobrun",
        "bitsnb._completion",
        "bitsnb._events",
        "bitsnb._replication",
        "bitsnb._jobctl",
        "bitsnb._secrets",
        "bitsnb._persist",
        "bitsnb._uploadrun",
        "bitsnb._downloadrun",
        "bitsnb._pacing",
        "bitsnb._cluster_limits",
    ),
    "IO": (
        "bitsnb._transport",
        "bitsnb._readahead",
        "bitsnb._wide_reads",
        "bitsnb._engine",
        "bitsnb._segmented",
        "bitsnb._segment_parts",
        "bitsnb._segment_hash",
        "bitsnb._ranged",
        "bitsnb._fetchctx",
        "bitsnb._filecheck",
        "bitsnb._tempfile",
        "bitsnb._fsyncs",
        "bitsnb._http_clients",
        "bitsnb._upload",
        "bitsnb._store",
        "bitsnb._runtime",
        "bitsnb._failures",
        "bitsnb._client_options",
        "bitsnb._files",
        "bitsnb._filehash",
        "bitsnb._store_rows",
        "bitsnb._store_open",
        "bitsnb._store_pg",
        "bitsnb._store_pg_rows",
        "bitsnb._store_pg_conn",
        "bitsnb._store_pg_schema",
        "bitsnb._store_pg_copy",
        "bitsnb._store_pg_shares",
        "bitsnb._store_pg_views",
        "bitsnb._store_pg_limits",
        "bitsnb._store_table",
        "bitsnb._tcpinfo",
        "bitsnb._connectbuf",
        "bitsnb._wireahead",
    ),
    "rules without IO": (
        "bitsnb._http_rules",
        "bitsnb._response_head",
        "bitsnb._format",
        "bitsnb._planning",
        "bitsnb._net",
        "bitsnb._progress",
        "bitsnb._buckets",
        "bitsnb._yielding",
        "bitsnb._integrity",
        "bitsnb._segments",
        "bitsnb._segment_ramp",
        "bitsnb._jobchecks",
        "bitsnb._jobstats",
        "bitsnb._inflight",
        "bitsnb._validators",
        "bitsnb._cluster",
        "bitsnb._slots",
        "bitsnb._limit_shares",
    ),
    "vocabulary": (
        "bitsnb._enums",
        "bitsnb._codes",
        "bitsnb._errors",
        "bitsnb._records",
        "bitsnb._models",
        "bitsnb._states",
        "bitsnb._validate",
        "bitsnb._enumerator",
        "bitsnb._protocols",
        "bitsnb._store_api",
        "bitsnb._jobtable",
        "bitsnb._bandwidth",  # BandwidthWindow and rate checks: Policy's own vocabulary
    ),
}

#: Third-party packages only the front ends may import (top-level names).
FRONT_END_ONLY = frozenset({"ipywidgets", "IPython", "pandas"})


# -- the model ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Import:
    """One import statement's edge from a module of the package to another module."""

    src: str  # the importing module, e.g. "bitsnb._job"
    dst: str  # the imported module, e.g. "bitsnb._manager" (or an outside name, "pandas")
    path: str  # the importing file, relative, e.g. "bitsnb/_job.py"
    line: int
    where: str  # "module level", "in a function", "under TYPE_CHECKING", "import_module()"

    @property
    def at(self) -> str:
        return f"{self.path}:{self.line}"

    def __str__(self) -> str:
        return f"{self.src} -> {self.dst} ({self.at}, {self.where})"


@dataclass(frozen=True)
class Finding:
    """A problem found in a file, with where it is."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


@dataclass
class Package:
    """What the scan of a package's files gives: its modules, imports and private uses."""

    modules: dict[str, str] = field(default_factory=dict)  # module name -> relative path
    imports: list[Import] = field(default_factory=list)  # edges between the package's modules
    external: list[Import] = field(default_factory=list)  # imports of anything else
    private: list[Finding] = field(default_factory=list)  # private names of other modules


def _is_private(name: str) -> bool:
    """``_y`` is private; ``__version__`` (a dunder) and ``y`` are not."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def module_name(path: str) -> tuple[str, bool]:
    """``bitsnb/notebook/__init__.py`` -> ("bitsnb.notebook", True); ``bitsnb/_x.py`` ->
    ("bitsnb._x", False). The bool says whether the file is a package's ``__init__``."""
    parts = path.removesuffix(".py").split("/")
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


class _FileScanner(ast.NodeVisitor):
    """Collects one file's imports, the names they bind to modules, and private attribute uses."""

    def __init__(self, module: str, is_package: bool, path: str, modules: Mapping[str, str]):
        self.module = module
        self.package = module if is_package else module.rpartition(".")[0]
        self.root = module.partition(".")[0]
        self.path = path
        self.modules = modules
        self.where: list[str] = []
        self.imports: list[Import] = []
        self.external: list[Import] = []
        self.private: list[Finding] = []
        self.bound: dict[str, str] = {}  # local name -> the package module it is bound to

    # where an import stands
    def _context(self) -> str:
        return self.where[-1] if self.where else "module level"

    def _nested(self, node: ast.AST, where: str) -> None:
        self.where.append(where)
        self.generic_visit(node)
        self.where.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._nested(node, self.where[-1] if self.where else "in a function")

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._nested(node, self.where[-1] if self.where else "in a function")

    def visit_If(self, node: ast.If) -> None:
        if not _is_type_checking(node.test):
            self.generic_visit(node)
            return
        self.visit(node.test)
        for stmt in node.body:
            self.where.append("under TYPE_CHECKING")
            self.visit(stmt)
            self.where.pop()
        for stmt in node.orelse:
            self.visit(stmt)

    # resolving names
    def _ours(self, name: str) -> bool:
        return name == self.root or name.startswith(self.root + ".")

    def _known(self, name: str) -> str:
        """The longest prefix of *name* that is a module of the package."""
        while name not in self.modules and "." in name:
            name = name.rpartition(".")[0]
        return name

    def _edge(self, dst: str, line: int, where: str | None = None) -> None:
        where = where or self._context()
        if self._ours(dst):
            dst = self._known(dst)
            if dst != self.module:
                self.imports.append(Import(self.module, dst, self.path, line, where))
        else:
            self.external.append(Import(self.module, dst, self.path, line, where))

    def _base(self, node: ast.ImportFrom) -> str | None:
        if node.level == 0:
            return node.module
        parts = self.package.split(".") if self.package else []
        up = node.level - 1
        if up >= len(parts):
            return None  # beyond the top package: Python refuses it
        base = ".".join(parts[: len(parts) - up])
        if node.module:
            base = f"{base}.{node.module}" if base else node.module
        return base

    # imports
    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._edge(alias.name, node.lineno)
            if self._ours(alias.name):
                if alias.asname:
                    self.bound[alias.asname] = self._known(alias.name)
                else:  # ``import bitsnb.x`` binds ``bitsnb``
                    self.bound[alias.name.partition(".")[0]] = self.root

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = self._base(node)
        if base is None:
            return
        if not self._ours(base):
            self._edge(base, node.lineno)
            return
        base = self._known(base)
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            if alias.name != "*" and sub in self.modules:
                self._edge(sub, node.lineno)
                self.bound[alias.asname or alias.name] = sub
                continue
            self._edge(base, node.lineno)
            if _is_private(alias.name) and base != self.module:
                self.private.append(
                    Finding(
                        self.path,
                        node.lineno,
                        f"{self.module} imports private name {alias.name} from {base}",
                    )
                )

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if (
            name in {"import_module", "__import__"}
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and not node.args[0].value.startswith(".")
        ):
            self._edge(node.args[0].value, node.lineno, f"{name}()")
        self.generic_visit(node)

    # private attributes of modules
    def _module_of(self, node: ast.expr) -> str | None:
        if isinstance(node, ast.Name):
            return self.bound.get(node.id)
        if isinstance(node, ast.Attribute):
            outer = self._module_of(node.value)
            if outer is not None and f"{outer}.{node.attr}" in self.modules:
                return f"{outer}.{node.attr}"
        return None

    def check_attributes(self, tree: ast.AST) -> None:
        """After the imports are known: ``mod._y`` where ``mod`` is bound to another module."""
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or not _is_private(node.attr):
                continue
            owner = self._module_of(node.value)
            if owner is None or owner == self.module or f"{owner}.{node.attr}" in self.modules:
                continue
            self.private.append(
                Finding(
                    self.path,
                    node.lineno,
                    f"{self.module} uses private name {node.attr} of {owner}",
                )
            )


def scan_sources(files: Mapping[str, str]) -> Package:
    """Scan a package given as {relative path: source}, e.g. {"bitsnb/_x.py": "..."}."""
    pkg = Package()
    for path in sorted(files):
        name, _ = module_name(path)
        pkg.modules[name] = path
    for path in sorted(files):
        name, is_package = module_name(path)
        tree = ast.parse(files[path], filename=path)
        scanner = _FileScanner(name, is_package, path, pkg.modules)
        scanner.visit(tree)
        scanner.check_attributes(tree)
        pkg.imports.extend(dict.fromkeys(scanner.imports))  # one edge per (module, line)
        pkg.external.extend(dict.fromkeys(scanner.external))
        pkg.private.extend(sorted(scanner.private, key=lambda f: f.line))
    return pkg


def scan_package(root: Path) -> Package:
    """Scan every ``.py`` file under the package folder *root*."""
    base = root.parent
    files = {
        p.relative_to(base).as_posix(): p.read_text(encoding="utf-8")
        for p in sorted(root.rglob("*.py"))
    }
    return scan_sources(files)


# -- the checks --------------------------------------------------------------------------------
def strongly_connected(nodes: Iterable[str], edges: Iterable[Import]) -> list[list[str]]:
    """Tarjan's algorithm: the components with more than one module (iterative, no recursion)."""
    graph: dict[str, list[str]] = {n: [] for n in nodes}
    for e in edges:
        graph.setdefault(e.src, []).append(e.dst)
        graph.setdefault(e.dst, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, int]] = [(start, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            succ = sorted(set(graph[node]))
            if i < len(succ):
                work.append((node, i + 1))
                nxt = succ[i]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if work:  # done with node: hand its low-link to the parent
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                comp: list[str] = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return sorted(found)


def _shortest_cycle(start: str, members: set[str], edges: list[Import]) -> list[Import]:
    """The shortest path of edges from *start* back to *start* inside one component."""
    out: dict[str, list[Import]] = {}
    for e in edges:
        out.setdefault(e.src, []).append(e)
    came: dict[str, Import] = {}
    frontier = [start]
    while frontier:
        nxt: list[str] = []
        for node in frontier:
            for e in out.get(node, []):
                if e.dst == start:
                    path = [e]
                    while path[0].src != start:
                        path.insert(0, came[path[0].src])
                    return path
                if e.dst in members and e.dst not in came:
                    came[e.dst] = e
                    nxt.append(e.dst)
        frontier = nxt
    return []


def find_cycles(modules: Iterable[str], imports: Iterable[Import]) -> list[str]:
    """One message per import cycle: its modules, a shortest cycle, and every edge inside it."""
    edges = list(imports)
    messages = []
    for comp in strongly_connected(modules, edges):
        members = set(comp)
        inside = sorted(
            (e for e in edges if e.src in members and e.dst in members),
            key=lambda e: (e.src, e.dst, e.line),
        )
        cycle = _shortest_cycle(comp[0], members, inside)
        loop = " -> ".join([e.src for e in cycle] + [comp[0]])
        lines = "\n".join(f"    {e}" for e in inside)
        messages.append(f"cycle among {', '.join(comp)}: {loop}\n  its edges:\n{lines}")
    return messages


def layer_of(module: str, layers: Mapping[str, Iterable[str]]) -> int | None:
    """The index of *module*'s layer (0 = most outer), inherited from a listed package; the top
    package's own entry covers only its ``__init__``. None when the map does not list it."""
    index = {name: i for i, names in enumerate(layers.values()) for name in names}
    name = module
    while True:
        if name in index:
            return index[name]
        name = name.rpartition(".")[0]
        if "." not in name:  # the top package: its layer is not its submodules'
            return None


def check_layers(
    modules: Iterable[str], imports: Iterable[Import], layers: Mapping[str, Iterable[str]]
) -> list[str]:
    """Unlisted modules, and imports from a more outer layer, one message each."""
    names = list(layers)
    messages = [
        f"{m} is in no layer: classify it in LAYERS" for m in modules if layer_of(m, layers) is None
    ]
    for e in imports:
        src, dst = layer_of(e.src, layers), layer_of(e.dst, layers)
        if src is not None and dst is not None and dst < src:
            messages.append(
                f"{e.at}: {e.src} ({names[src]}) imports {e.dst} ({names[dst]}), {e.where}"
            )
    return messages


def check_front_end_only(
    external: Iterable[Import], layers: Mapping[str, Iterable[str]], banned: Iterable[str]
) -> list[str]:
    """Imports of *banned* packages from any module below the outermost layer."""
    banned = set(banned)
    names = list(layers)
    messages = []
    for e in external:
        layer = layer_of(e.src, layers)
        if layer is not None and layer > 0 and e.dst.partition(".")[0] in banned:
            messages.append(f"{e.at}: {e.src} ({names[layer]}) imports {e.dst}, {e.where}")
    return messages


def _report(title: str, messages: list[str]) -> str:
    return f"{title} ({len(messages)}):\n" + "\n".join(messages)


# -- the tests on bitsnb -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def bitsnb_package() -> Package:
    spec = importlib.util.find_spec("bitsnb")  # where the suite imports it from, unimported
    assert spec is not None and spec.submodule_search_locations
    return scan_package(Path(next(iter(spec.submodule_search_locations))))


def test_scan_sees_the_package(bitsnb_package: Package) -> None:
    """A scan that found nothing would pass every check below."""
    assert {"bitsnb", "bitsnb._sync", "bitsnb.notebook._panels"} <= set(bitsnb_package.modules)
    assert any(e.dst == "bitsnb._codes" for e in bitsnb_package.imports)


def test_no_import_cycles(bitsnb_package: Package) -> None:
    cycles = find_cycles(bitsnb_package.modules, bitsnb_package.imports)
    if cycles:
        pytest.fail(_report("import cycles in bitsnb", cycles), pytrace=False)


def test_imports_run_one_way(bitsnb_package: Package) -> None:
    problems = check_layers(bitsnb_package.modules, bitsnb_package.imports, LAYERS)
    if problems:
        pytest.fail(_report("imports against the layers", problems), pytrace=False)


def test_no_private_name_from_another_module(bitsnb_package: Package) -> None:
    found = [str(f) for f in bitsnb_package.private]
    if found:
        pytest.fail(_report("private names taken from another module", found), pytrace=False)


def test_the_core_imports_no_widgets_and_no_pandas(bitsnb_package: Package) -> None:
    found = check_front_end_only(bitsnb_package.external, LAYERS, FRONT_END_ONLY)
    if found:
        title = "front-end-only packages imported below the front ends"
        pytest.fail(_report(title, found), pytrace=False)


# -- the checks on made-up packages ------------------------------------------------------------
TOY_LAYERS: dict[str, tuple[str, ...]] = {
    "outer": ("pkg", "pkg.ui"),
    "middle": ("pkg.core",),
    "inner": ("pkg.base", "pkg.util"),
}


def _edges(*pairs: str) -> list[Import]:
    """Edges from "src>dst" pairs, at made-up lines 1, 2, 3..."""
    out = []
    for n, pair in enumerate(pairs, 1):
        src, dst = pair.split(">")
        out.append(Import(src, dst, src.replace(".", "/") + ".py", n, "module level"))
    return out


def test_tarjan_finds_every_cycle_and_no_more() -> None:
    edges = _edges("a>b", "b>c", "c>a", "c>d", "d>e", "e>d", "f>f", "g>a")
    assert strongly_connected("abcdefgh", edges) == [["a", "b", "c"], ["d", "e"]]


def test_tarjan_on_a_deep_chain_does_not_recurse() -> None:
    chain = [f"m{i}>m{i + 1}" for i in range(5000)] + ["m5000>m0"]
    (comp,) = strongly_connected([], _edges(*chain))
    assert len(comp) == 5001


def test_find_cycles_names_the_modules_and_lines() -> None:
    (message,) = find_cycles("xyz", _edges("x>y", "y>z", "z>x", "x>z"))
    assert message.startswith("cycle among x, y, z: x -> z -> x")
    assert "y -> z (y.py:2, module level)" in message
    assert find_cycles("xyz", _edges("x>y", "y>z", "x>z")) == []


def test_a_package_init_and_its_submodule_form_a_cycle() -> None:
    pkg = scan_sources(
        {
            "pkg/__init__.py": "from ._a import thing\n",
            "pkg/_a.py": "def f():\n    from . import helper\n",
        }
    )
    assert set(pkg.imports) == {
        Import("pkg", "pkg._a", "pkg/__init__.py", 1, "module level"),
        Import("pkg._a", "pkg", "pkg/_a.py", 2, "in a function"),
    }
    (message,) = find_cycles(pkg.modules, pkg.imports)
    assert "cycle among pkg, pkg._a" in message and "pkg/_a.py:2" in message


def test_scan_resolves_every_form_of_import() -> None:
    pkg = scan_sources(
        {
            "pkg/__init__.py": "",
            "pkg/base.py": "",
            "pkg/util.py": "",
            "pkg/core/__init__.py": "from .. import base\nfrom ..util import x\n",
            "pkg/core/run.py": (
                "from typing import TYPE_CHECKING\n"
                "import pkg.ui\n"
                "from pkg.core import run2\n"
                "if TYPE_CHECKING:\n"
                "    from . import plain_name\n"
                "import importlib\n"
                "importlib.import_module('pkg.util')\n"
                "import os.path\n"
            ),
            "pkg/core/run2.py": "",
            "pkg/ui.py": "",
        }
    )
    got = {(e.src, e.dst, e.line, e.where) for e in pkg.imports}
    assert got == {
        ("pkg.core", "pkg.base", 1, "module level"),
        ("pkg.core", "pkg.util", 2, "module level"),
        ("pkg.core.run", "pkg.ui", 2, "module level"),
        ("pkg.core.run", "pkg.core.run2", 3, "module level"),
        ("pkg.core.run", "pkg.core", 5, "under TYPE_CHECKING"),
        ("pkg.core.run", "pkg.util", 7, "import_module()"),
    }
    assert {e.dst for e in pkg.external} == {"typing", "importlib", "os.path"}


def test_layers_report_an_outward_import_and_accept_inward_ones() -> None:
    edges = _edges("pkg.core>pkg.ui", "pkg.ui>pkg.core", "pkg.core>pkg.base", "pkg.base>pkg.util")
    modules = ["pkg", "pkg.ui", "pkg.core", "pkg.base", "pkg.util"]
    assert check_layers(modules, edges, TOY_LAYERS) == [
        "pkg/core.py:1: pkg.core (middle) imports pkg.ui (outer), module level"
    ]
    assert check_layers(modules, edges[1:], TOY_LAYERS) == []


def test_layers_are_inherited_but_not_from_the_top_package() -> None:
    assert layer_of("pkg.core.deep.er", TOY_LAYERS) == 1
    assert layer_of("pkg", TOY_LAYERS) == 0
    assert layer_of("pkg.stray", TOY_LAYERS) is None
    assert check_layers(["pkg.stray", "pkg.core.x"], [], TOY_LAYERS) == [
        "pkg.stray is in no layer: classify it in LAYERS"
    ]


def test_layer_map_lists_each_module_once() -> None:
    listed = [m for names in LAYERS.values() for m in names]
    assert len(listed) == len(set(listed))


def test_private_names_of_other_modules_are_reported() -> None:
    pkg = scan_sources(
        {
            "pkg/__init__.py": "__version__ = '1'\n",
            "pkg/_engine.py": "_local_failure = 1\n",
            "pkg/_store.py": "",
            "pkg/sub/__init__.py": "",
            "pkg/sub/_impl.py": "",
            "pkg/user.py": (
                "from ._engine import _local_failure\n"
                "from . import _engine, __version__\n"
                "from .sub import _impl\n"
                "import pkg._store as s\n"
                "import pkg\n"
                "def f(x):\n"
                "    return _engine._network_failure, s._X, x._private, pkg._store._Y\n"
                "_engine._client = None\n"
                "_impl.public, pkg.sub._impl\n"
            ),
        }
    )
    assert [str(f) for f in pkg.private] == [
        "pkg/user.py:1: pkg.user imports private name _local_failure from pkg._engine",
        "pkg/user.py:7: pkg.user uses private name _network_failure of pkg._engine",
        "pkg/user.py:7: pkg.user uses private name _X of pkg._store",
        "pkg/user.py:7: pkg.user uses private name _Y of pkg._store",
        "pkg/user.py:8: pkg.user uses private name _client of pkg._engine",
    ]


def test_private_modules_and_public_names_are_fine() -> None:
    pkg = scan_sources(
        {
            "pkg/__init__.py": "from ._codes import E_FAIL\nfrom . import _codes\n",
            "pkg/_codes.py": "E_FAIL = 1\n_own = 2\nprint(_own)\n",
            "pkg/_engine.py": (
                "from . import _codes\n"
                "from ._codes import E_FAIL\n"
                "from pkg import __version__\n"
                "class Engine:\n    _x = _codes.E_FAIL\n    def f(self):\n        return self._x\n"
            ),
        }
    )
    assert pkg.private == []


def test_front_end_only_packages_are_reported_below_the_front_ends() -> None:
    pkg = scan_sources(
        {
            "pkg/__init__.py": "import pandas\n",
            "pkg/ui.py": "import ipywidgets\nfrom IPython.display import display\n",
            "pkg/core.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    import pandas as pd\n"
                "def show():\n    from IPython.display import display\n"
                "import pandas_extra\n"
            ),
            "pkg/base.py": "import importlib\nimportlib.import_module('ipywidgets')\n",
        }
    )
    assert check_front_end_only(pkg.external, TOY_LAYERS, FRONT_END_ONLY) == [
        "pkg/base.py:2: pkg.base (inner) imports ipywidgets, import_module()",
        "pkg/core.py:3: pkg.core (middle) imports pandas, under TYPE_CHECKING",
        "pkg/core.py:5: pkg.core (middle) imports IPython.display, in a function",
    ]


# -- every state change goes through the state table -------------------------------------------
# ``Records`` (``_persist.py``) is the one place a job's state is assigned, always to what
# ``_states.transition`` answered; replication copies another process's state as it is.
_STATE_WRITERS = {"_persist.py": "new", "_replication.py": "fresh.state"}


def state_assignments(source: str) -> list[tuple[int, str]]:
    """(line, assigned expression) of every ``<x>.state = <value>`` in *source*."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Attribute) and target.attr == "state" and node.value:
                    found.append((node.lineno, ast.unparse(node.value)))
    return found


def test_state_assignments_are_found() -> None:
    src = "rec.state = JobState.QUEUED\nx = 1\nrec.other = 2\nself.a.state = new\n"
    assert state_assignments(src) == [(1, "JobState.QUEUED"), (4, "new")]


def test_job_states_move_only_through_the_table() -> None:
    root = Path(bitsnb.__file__).parent
    bad = []
    for path in sorted(root.glob("*.py")):  # the package's own modules (not server/testing)
        for line, value in state_assignments(path.read_text("utf-8")):
            if _STATE_WRITERS.get(path.name) != value:
                bad.append(f"{path.name}:{line}: state = {value}")
    assert not bad, "job states set outside the transition table:\n" + "\n".join(bad)
