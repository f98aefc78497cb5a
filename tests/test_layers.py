"""The layout's rules, checked on the source (STYLE.md rule 10, issue 17):

- no import cycle between modules, counting the imports placed inside functions (they hide a
  cycle from Python's import machinery, not from a reader);
- the engine (`sync`) never imports the UI (`dashboard`);
- `sync/`'s top level stays navigable: at most MAX_TOP_LEVEL modules beside its packages.

Imports are read with `ast`, so nothing is executed. `from package import name` counts as an
import of the submodule `package.name` when there is one, else of the package itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APPS = ("sync", "dashboard", "nightingale")
ENGINE, UI = "sync", "dashboard"
MAX_TOP_LEVEL = 20


def module_files(root: Path, apps=APPS) -> dict[str, Path]:
    found = {}
    for app in apps:
        for path in sorted((root / app).rglob("*.py")):
            relative = path.relative_to(root)
            if "migrations" in relative.parts:
                continue
            parts = list(relative.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _owner(name: str, modules: dict[str, Path]) -> str | None:
    """The project module an imported name lives in (None: outside the project)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(modules: dict[str, Path]) -> dict[str, dict[str, int]]:
    """module -> {imported project module: line of the first such import}, at any depth."""
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        edges: dict[str, int] = {}
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[:len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, *([node.module] if node.module else [])])
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            for target in targets:
                owner = _owner(target, modules)
                if owner and owner != name:
                    edges.setdefault(owner, node.lineno)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, {})))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def describe(component: list[str], graph: dict[str, dict[str, int]]) -> str:
    members = set(component)
    return "; ".join(f"{a} -> {b} (line {line})" for a in component
                     for b, line in sorted(graph[a].items()) if b in members)


def engine_to_ui(graph: dict[str, dict[str, int]]) -> list[str]:
    return [f"{a} -> {b} (line {line})" for a, edges in sorted(graph.items())
            if a.split(".")[0] == ENGINE for b, line in sorted(edges.items()) if b.split(".")[0] == UI]


def test_no_import_cycle_between_modules():
    graph = import_graph(module_files(ROOT))
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(describe(c, graph) for c in found)


def test_the_engine_never_imports_the_ui():
    assert engine_to_ui(import_graph(module_files(ROOT))) == []


def test_the_engine_top_level_stays_small():
    top = sorted(p.name for p in (ROOT / ENGINE).glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL, f"sync/ has {len(top)} modules (at most {MAX_TOP_LEVEL}): {top}"


def test_every_engine_package_says_what_it_owns_and_may_import():
    for init in sorted((ROOT / ENGINE).glob("*/__init__.py")):
        if init.parent.name in ("migrations", "management"):
            continue
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "May import" in doc or "may import" in doc, f"{init.relative_to(ROOT)} does not say what it may import"


# --- the checks themselves can fail -------------------------------------------------------------

def _tree(tmp_path: Path, files: dict[str, str]) -> dict[str, dict[str, int]]:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return import_graph(module_files(tmp_path, apps=("sync", "dashboard")))


def test_a_cycle_hidden_inside_a_function_is_found(tmp_path):
    graph = _tree(tmp_path, {
        "sync/__init__.py": "",
        "sync/models.py": "def title():\n    from sync.audit import TargetHead\n",
        "sync/audit.py": "from sync.models import AuditEntry\n",
        "sync/ids.py": "",
    })
    assert cycles(graph) == [["sync.audit", "sync.models"]]
    assert "sync.models -> sync.audit (line 2)" in describe(["sync.audit", "sync.models"], graph)


def test_a_cycle_through_a_package_and_relative_imports_is_found(tmp_path):
    graph = _tree(tmp_path, {
        "sync/__init__.py": "",
        "sync/search/__init__.py": "",
        "sync/search/query.py": "from sync.observe import counters\n",
        "sync/observe/__init__.py": "",
        "sync/observe/counters.py": "from . import metrics\n",
        "sync/observe/metrics.py": "def gauges():\n    from ..search import query\n",
    })
    assert cycles(graph) == [["sync.observe.counters", "sync.observe.metrics", "sync.search.query"]]


def test_an_engine_import_of_the_ui_is_found(tmp_path):
    graph = _tree(tmp_path, {
        "sync/__init__.py": "",
        "sync/commands.py": "import dashboard.forms\n",
        "dashboard/__init__.py": "",
        "dashboard/forms.py": "from sync import commands\n",
    })
    assert engine_to_ui(graph) == ["sync.commands -> dashboard.forms (line 1)"]
    assert cycles(graph) == [["dashboard.forms", "sync.commands"]]
