"""The package as a whole: no import circle between its modules, one meaning per public name.

Imports are read with ``ast`` (nothing is executed). ``from package import name`` is an edge
to the submodule ``package.name`` when one exists, to ``package`` otherwise. Module-level
imports must form no circle anywhere in ``src/``; in ``gradharmony.data`` not even an import
inside a function may close one.
"""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def module_files(src: Path) -> dict[str, tuple[Path, bool]]:
    """``{dotted name: (file, is a package)}`` of every module under ``src``."""
    out = {}
    for f in sorted(src.rglob("*.py")):
        parts = list(f.relative_to(src).with_suffix("").parts)
        package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if package else parts)] = (f, package)
    return out


def import_graph(src: Path, inside_functions: bool = False) -> dict[str, set[str]]:
    """The modules each module imports at module level (with ``inside_functions``: anywhere),
    modules under ``src`` only."""
    modules = module_files(src)
    graph = {}
    for name, (path, package) in modules.items():
        here = name if package else name.rpartition(".")[0]
        edges = set()
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree) if inside_functions else tree.body:
            if isinstance(node, ast.Import):
                edges.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join([*parent, *([base] if base else [])])
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    edges.add(sub if sub in modules else base)
        graph[name] = {m for m in edges if m in modules and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_the_checker_finds_a_circle_and_resolves_relative_imports(tmp_path):
    src = _write(tmp_path, {
        "pkg/__init__.py": "from .a import f\n",
        "pkg/a.py": "from . import b\ndef f():\n    from pkg import c\n",
        "pkg/b.py": "import pkg.sub.d\n",
        "pkg/c.py": "from pkg.a import f\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/d.py": "from ..a import f\n",
    })
    graph = import_graph(src)
    assert graph["pkg.a"] == {"pkg.b"}  # `from . import b` is the submodule, not the package
    assert graph["pkg.sub.d"] == {"pkg.a"}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.d"]]  # c imports a only in a function
    assert cycles(import_graph(src, inside_functions=True)) == [
        ["pkg.a", "pkg.b", "pkg.c", "pkg.sub.d"]]


def test_src_has_no_import_circle():
    graph = import_graph(SRC)
    assert len(graph) > 50 and "gradharmony.data.dataset" in graph
    assert cycles(graph) == []


def test_the_data_package_has_no_circle_even_through_imports_inside_functions():
    graph = import_graph(SRC, inside_functions=True)
    data = {m: {n for n in e if n.startswith("gradharmony.data.")}
            for m, e in graph.items() if m.startswith("gradharmony.data.")}
    assert "gradharmony.data.dataset" in data["gradharmony.data.loader"]
    assert cycles(data) == []


#: public names still defined in two modules, each with the module that should give way
TWO_MEANINGS = {
    "METHODS": "balance.trainer (the balance methods; harmonize's are the gradient methods)",
    "MODALITIES": "balance.trainer (audio/visual; models.vatt's are video/audio/text)",
    "linear_probe": "balance.trainer (returns a float; evaluate.probe's returns a dict)",
    "EMBEDDINGS": "train.loop (the same tuple as evaluate.gradients.EMBEDDINGS)",
    "DEFAULT_DATA": "experiment.tables (data/study; evaluate.cli's is data/synthetic)",
}


def public_definitions(src: Path) -> dict[str, list[str]]:
    """Public classes, functions and upper-case constants defined at module level, by name
    (``main`` aside: every command module has one)."""
    out: dict[str, list[str]] = {}
    for name, (path, _) in module_files(src).items():
        for node in ast.parse(path.read_text()).body:
            names = []
            if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
                names = [node.name]
            elif isinstance(node, ast.Assign):
                names = [t.id for t in node.targets if isinstance(t, ast.Name) and t.id.isupper()]
            for n in names:
                if not n.startswith("_") and n != "main":
                    out.setdefault(n, []).append(name)
    return out


def test_each_public_name_means_one_thing():
    twice = {n: m for n, m in public_definitions(SRC).items() if len(m) > 1}
    assert {n: m for n, m in twice.items() if n not in TWO_MEANINGS} == {}
    assert sorted(n for n in TWO_MEANINGS if n not in twice) == []  # fixed: drop it from the list
