"""Package boundaries: core knows no plugin package and has no import cycle; plugins use only dqf's public rooms
(``dqf``, ``dqf.lm``, ``dqf.select``, ``dqf.testing``) and no other plugin package's modules; entry points import light."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import dqf
import dqf.lm
import dqf.select
import dqf.testing

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "core" / "dqf"
PLUGIN_TREES = [ROOT / "plugins", ROOT / "contrib"]
PLUGIN_PACKAGES = ("dqf_plugins", "dqf_contrib")
HEAVY = ("numpy", "polars", "torch", "transformers")
#: The public rooms plugins may import, each checked against its own ``__all__``.
PUBLIC = {"dqf": dqf, "dqf.lm": dqf.lm, "dqf.select": dqf.select, "dqf.testing": dqf.testing}
#: The plugin contract: what ``dqf`` itself exports, and nothing else.
CONTRACT = {
    "__version__", "hookimpl", "Plugin", "Scorer", "Selector", "Probe", "Embedder", "Backend", "PluginOptions", "BudgetOptions",
    "PluginSpec", "StepContext", "Workspace", "BASE_COLUMNS", "DERIVED_COLUMNS", "FAILED_COLUMN", "row_texts",
    "atomic_path", "DqfError", "DataError", "PluginError", "RecipeError", "require", "missing_dependency",
    "load_recipe", "validate", "run",
}


def _py_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def imported_modules(source: str) -> list[tuple[int, str, tuple[str, ...]]]:
    """``(line, absolute module, names)`` for every absolute import, including dynamic ones with a literal name.

    ``import a.b`` gives ``("a.b", ())``; ``from a import x, y`` gives ``("a", ("x", "y"))``.
    Relative imports (``from . import x``) stay inside their own package and are skipped.
    """
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.append((node.lineno, alias.name, ()))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module, tuple(a.name for a in node.names)))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            fname = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if fname in ("import_module", "__import__"):
                out.append((node.lineno, node.args[0].value, ()))
    return out


def _top(module: str) -> str:
    return module.split(".", 1)[0]


def core_violations(source: str) -> list[str]:
    return [f"line {ln}: imports {mod}" for ln, mod, _ in imported_modules(source) if _top(mod) in PLUGIN_PACKAGES]


def plugin_violations(source: str, package: str = "dqf_contrib.example") -> list[str]:
    """Imports of dqf outside its public rooms or their ``__all__``, and relative imports that leave ``package``
    (the plugin's own package, e.g. ``dqf_contrib.ifd``)."""
    bad = []
    for ln, mod, names in imported_modules(source):
        if _top(mod) != "dqf":
            continue
        if mod not in PUBLIC:
            bad.append(f"line {ln}: imports the private dqf module {mod!r}; use dqf, dqf.lm, dqf.select or dqf.testing")
            continue
        public = set(PUBLIC[mod].__all__)
        for name in names:
            if name not in public:
                bad.append(f"line {ln}: `from {mod} import {name}` is not in {mod}.__all__")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            parts = package.split(".")
            if node.level > len(parts):
                bad.append(f"line {node.lineno}: relative import above the top package")
                continue
            base = parts[:len(parts) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
            if target != package and not target.startswith(package + "."):
                bad.append(f"line {node.lineno}: relative import of {target!r} leaves the plugin package {package!r}")
    return bad


def _package_of(path: Path, tree: Path) -> str:
    """The plugin package a file belongs to: ``dqf_contrib.ifd`` for contrib/dqf_contrib/ifd/ifd.py,
    ``dqf_plugins`` for plugins/dqf_plugins/top_k.py."""
    rel = path.relative_to(tree).with_suffix("").parts
    return ".".join(rel[:2]) if rel[0] == "dqf_contrib" and len(rel) > 2 else rel[0]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT / "core").with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(sources: dict[str, tuple[str, bool]]) -> dict[str, set[str]]:
    """Edges module -> modules it imports (anywhere in the file: top level, functions, TYPE_CHECKING), among
    ``sources`` (module name -> (source, is_package)). ``from a import b`` goes to ``a.b`` when that is a module."""
    graph: dict[str, set[str]] = {m: set() for m in sources}
    for mod, (src, is_pkg) in sources.items():
        pkg = mod if is_pkg else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(src)):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = pkg.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in sources else base for a in node.names]
            graph[mod] |= {t for t in targets if t in sources and t != mod}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


# -- the checkers themselves catch what they should ---------------------------------------------

@pytest.mark.parametrize(
    "source",
    [
        "import dqf_plugins",
        "import dqf_contrib.heuristic",
        "from dqf_plugins.top_k import TopKSelector",
        "from dqf_contrib import heuristic",
        "def f():\n    import dqf_plugins.random\n",
        "import importlib\nimportlib.import_module('dqf_contrib.heuristic')",
    ],
)
def test_core_checker_flags_plugin_imports(source):
    assert core_violations(source)


@pytest.mark.parametrize(
    "source",
    [
        "import dqf.plugin",
        "from dqf.plugin import Scorer",
        "from dqf.recipe import Recipe",
        "from dqf import recipe",
        "from dqf import BASE_COLUMNS, ENTRY_POINT_GROUP",
        "from dqf import *",
        "from dqf import load_model",  # toolkit names are not the contract's
        "from dqf.lm import Scorer",  # nor the contract's the toolkit's
        "from dqf.lm.models import ModelMixin",
        "from dqf.select.kcenter import kcenter_greedy",
        "if TYPE_CHECKING:\n    from dqf.engine import Engine\n",
        "from ..perplexity.perplexity import CausalLMScorer",  # another contrib package's module
        "from .. import _shared",
    ],
)
def test_plugin_checker_flags_private_imports(source):
    assert plugin_violations(source, "dqf_contrib.ifd")


@pytest.mark.parametrize(
    "source",
    ["import dqf", "from dqf import Scorer, PluginOptions, hookimpl", "from . import x", "from .ifd import T",
     "from dqf.lm import CausalLMScorer, answer_losses", "from dqf.select import knn_search", "import dqf.lm",
     "from dqf.testing import TinyModels", "import dqf_plugins_helpers_other"],
)
def test_plugin_checker_accepts_public_imports(source):
    assert plugin_violations(source, "dqf_contrib.ifd") == []


def test_cycle_finder_finds_cycles_through_functions_and_relative_imports():
    sources = {
        "p": ("from p import a", True),
        "p.a": ("def f():\n    from .b import x\n", False),
        "p.b": ("import p.c", False),
        "p.c": ("from p import a", False),
        "p.d": ("import p.a", False),
    }
    graph = import_graph(sources)
    assert graph["p.a"] == {"p.b"} and graph["p.c"] == {"p.a"}
    assert cycles(graph) == [["p.a", "p.b", "p.c"]]
    assert cycles(import_graph({"q": ("", True), "q.x": ("from q import y", False), "q.y": ("", False)})) == []


# -- the real tree -----------------------------------------------------------------------------

def test_core_does_not_import_plugin_packages():
    files = _py_files(CORE)
    assert CORE / "__init__.py" in files and CORE / "registry.py" in files
    problems = {str(f.relative_to(ROOT)): v for f in files if (v := core_violations(f.read_text(encoding="utf-8")))}
    assert problems == {}


def test_plugins_and_contrib_use_only_public_dqf_api():
    files = [f for tree in PLUGIN_TREES for f in _py_files(tree)]
    rel = {str(f.relative_to(ROOT)) for f in files}
    assert {"plugins/dqf_plugins/__init__.py", "contrib/dqf_contrib/heuristic/__init__.py",
            "contrib/dqf_contrib/heuristic/heuristic.py"} <= rel
    problems = {}
    for tree in PLUGIN_TREES:
        for f in _py_files(tree):
            v = plugin_violations(f.read_text(encoding="utf-8"), _package_of(f, tree))
            if v:
                problems[str(f.relative_to(ROOT))] = v
    assert problems == {}
    # The scan is not vacuous: the plugin trees do import dqf and its toolkit.
    mods = [mod for f in files for _, mod, _ in imported_modules(f.read_text(encoding="utf-8"))]
    assert mods.count("dqf") >= 3 and mods.count("dqf.lm") >= 3 and mods.count("dqf.select") >= 3


def test_core_has_no_import_cycle():
    files = _py_files(CORE)
    sources = {_module_name(f): (f.read_text(encoding="utf-8"), f.name == "__init__.py") for f in files}
    graph = import_graph(sources)
    assert {"dqf", "dqf.engine", "dqf.engine.ray", "dqf.lm.models"} <= set(graph)
    assert "dqf.engine.base" in graph["dqf.engine.ray"]  # the scan sees imports at all
    assert cycles(graph) == []


def test_dqf_exports_the_plugin_contract_only():
    assert set(dqf.__all__) == CONTRACT


@pytest.mark.parametrize("room", sorted(PUBLIC))
def test_public_names_exist(room):
    module = PUBLIC[room]
    assert [name for name in module.__all__ if not hasattr(module, name)] == []


# -- importing an entry point is cheap ----------------------------------------------------------

def _heavy_after(code: str) -> list[str]:
    probe = (
        f"{code}\n"
        "import json, sys\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_probe_detects_heavy_imports():
    assert "polars" in _heavy_after("import polars") and _heavy_after("import numpy") == ["numpy"]


@pytest.mark.parametrize("module", ["dqf", "dqf.lm", "dqf.select", "dqf_plugins", "dqf_contrib.heuristic"])
def test_entry_point_module_imports_nothing_heavy(module):
    assert _heavy_after(f"import {module}") == []


def test_loading_every_entry_point_imports_nothing_heavy():
    code = (
        "import importlib.metadata\n"
        "eps = importlib.metadata.entry_points(group='dqf')\n"
        "assert {ep.value for ep in eps} >= {'dqf_plugins', 'dqf_contrib.heuristic'}, eps\n"
        "[ep.load() for ep in eps]\n"
    )
    assert _heavy_after(code) == []


def test_building_the_plugin_manager_imports_nothing_heavy():
    """`dqf plugins` and plugin registration must not pay for polars or model libraries."""
    code = "from dqf.registry import build_plugin_manager\nh = build_plugin_manager()\nassert 'heuristic' in h.names('scorer')"
    assert _heavy_after(code) == []
