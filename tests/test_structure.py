"""The shape of the package: layers that only import downwards, no import cycles, every module
importable on its own, imports at module level (except optional or heavy dependencies), no file
too long to read, and no benchmark figures in code or docstrings (they live in
benchmarks/RESULTS.md)."""
import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "samlearn"

#: the layers, lowest first: a module may import only from its own layer or a lower one
LAYERS = [
    {"_version", "exceptions", "_utils", "presets", "metrics", "paper"},
    {"image"},
    {"nn", "datasets", "transforms"},
    {"training"},
    {"embedding"},
    {"matching"},
    {"apps"},
    {"plot", "jobs"},
    {"cli", "__init__", "__main__"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}

#: imports allowed inside functions: optional dependencies, and the command line, which imports
#: torch and everything built on it only in the commands that need them
LAZY_OK = {"matplotlib", "matplotlib.pyplot", "tqdm.auto", "threadpoolctl", "distributed"}
LAZY_OK_MODULES = {"samlearn.cli.commands"}

MAX_LINES = 650


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def _top(module: str) -> str:
    """The layer name of a samlearn module: its first sub-package or module."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(module: str, path: Path, tree=None):
    """(line, imported samlearn module, at module level?) of every import of samlearn code."""
    tree = tree or ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    nested = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
              for n in ast.walk(f)}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                target = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            yield node.lineno, name, id(node) not in nested


def test_every_module_belongs_to_a_layer():
    missing = sorted({_top(m) for m, _ in _modules()} - set(RANK))
    assert not missing, f"add {missing} to LAYERS"


def test_lower_layers_never_import_higher_ones():
    bad = []
    for module, path in _modules():
        for line, target, _ in _imports(module, path):
            if target.split(".")[0] != "samlearn" or target == "samlearn":
                continue
            if RANK[_top(target)] > RANK[_top(module)]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not bad, "\n".join(sorted(set(bad)))


def _module_graph():
    known = {m for m, _ in _modules()}
    graph = {}
    for module, path in _modules():
        deps = set()
        for _, target, top_level in _imports(module, path):
            if top_level and target in known and target != module:
                deps.add(target)
        graph[module] = deps
    return graph


def test_no_import_cycles_between_modules():
    """Module-level imports form no cycle (a package importing its own submodules in its
    ``__init__`` is not a cycle unless a submodule imports the package back)."""
    graph = _module_graph()
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    # a package's __init__ importing its submodules, and those importing siblings, is fine; a
    # cycle is a submodule importing a module that (transitively) imports it back
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_imports_sit_at_module_level():
    bad = []
    for module, path in _modules():
        if module in LAZY_OK_MODULES:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for f in ast.walk(tree):
            if not isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(f):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    names = ["." * node.level + (node.module or "")]
                else:
                    continue
                bad += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names if n not in LAZY_OK]
    assert not bad, "imports inside functions (move them to the top):\n" + "\n".join(bad)


def test_every_module_imports_on_its_own():
    """Each module imported first, in a fresh set of samlearn modules: an import cycle hidden by
    the order of the package's own imports fails here."""
    code = (
        "import importlib, sys\n"
        "mods = sys.argv[1:]\n"
        "import torch, numpy, scipy, sklearn, SimpleITK  # third-party modules stay loaded\n"
        "failed = []\n"
        "for m in mods:\n"
        "    for k in [k for k in sys.modules if k == 'samlearn' or k.startswith('samlearn.')]:\n"
        "        del sys.modules[k]\n"
        "    try:\n"
        "        importlib.import_module(m)\n"
        "    except Exception as exc:\n"
        "        failed.append(f'{m}: {type(exc).__name__}: {exc}')\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n")
    mods = [m for m, _ in _modules() if not m.endswith("__main__")]
    r = subprocess.run([sys.executable, "-c", code, *mods], capture_output=True, text=True, cwd=ROOT,
                       timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]


@pytest.mark.parametrize("module, path", list(_modules()), ids=[m for m, _ in _modules()])
def test_no_file_too_long_to_read(module, path):
    n = len(path.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(ROOT)} has {n} lines: split it by concept"


# a measured figure: "27.6 -> 19.2 px", "MRE 21.5", "0.1-0.2 s per query", "3.4x faster"
FIGURE = re.compile(r"[0-9]+(\.[0-9]+)? ?(px|mm|s|ms)? ?(->|→) ?[0-9.]+ ?(px|mm|s|ms)\b|MRE [0-9]"
                    r"|[0-9](\.[0-9]+)?x (faster|slower)|[0-9.]+ ?(s|ms) per (query|image|pair|CT)"
                    r"|[0-9]+-minute model")
# documents that live outside this repository
OUTSIDE_DOCS = re.compile(r"METHOD\.md|DESIGN\.md|PEERS\.md|shared/docs")


def test_no_benchmark_figures_or_outside_documents_in_code():
    bad = []
    for _, path in _modules():
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if FIGURE.search(line) or OUTSIDE_DOCS.search(line):
                bad.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not bad, "figures belong in benchmarks/RESULTS.md:\n" + "\n".join(bad)


def test_the_figure_check_can_fail():
    assert FIGURE.search("cut the MRE from 27.6 -> 19.2 px") and FIGURE.search("about 0.1 s per query")
    assert FIGURE.search("cut the error 3.8 mm -> 2.4 mm") and FIGURE.search("1.5x faster")
    assert OUTSIDE_DOCS.search("see METHOD.md") and not FIGURE.search("spacing of 2 mm")
    assert not FIGURE.search("maps index i -> 2 * i + 1")
