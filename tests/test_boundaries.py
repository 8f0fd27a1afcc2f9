"""Package boundaries: core knows no plugin package; plugins use only dqf's public API; entry points import light."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import dqf

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "core" / "dqf"
PLUGIN_TREES = [ROOT / "plugins", ROOT / "contrib"]
PLUGIN_PACKAGES = ("dqf_plugins", "dqf_contrib")
HEAVY = ("polars", "torch", "transformers")


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


def plugin_violations(source: str) -> list[str]:
    public = set(dqf.__all__)
    bad = []
    for ln, mod, names in imported_modules(source):
        if _top(mod) != "dqf":
            continue
        if mod != "dqf":
            bad.append(f"line {ln}: imports the dqf submodule {mod!r}; use `from dqf import ...`")
            continue
        for name in names:
            if name not in public:
                bad.append(f"line {ln}: `from dqf import {name}` is not in dqf.__all__")
    return bad


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
        "if TYPE_CHECKING:\n    from dqf.engine import Engine\n",
    ],
)
def test_plugin_checker_flags_private_imports(source):
    assert plugin_violations(source)


@pytest.mark.parametrize(
    "source",
    ["import dqf", "from dqf import Scorer, PluginOptions, hookimpl", "from . import x", "from .top_k import T",
     "import dqf_plugins_helpers_other"],
)
def test_plugin_checker_accepts_public_imports(source):
    assert plugin_violations(source) == []


# -- the real tree -----------------------------------------------------------------------------

def test_core_does_not_import_plugin_packages():
    files = _py_files(CORE)
    assert CORE / "__init__.py" in files and CORE / "plugins.py" in files
    problems = {str(f.relative_to(ROOT)): v for f in files if (v := core_violations(f.read_text(encoding="utf-8")))}
    assert problems == {}


def test_plugins_and_contrib_use_only_public_dqf_api():
    files = [f for tree in PLUGIN_TREES for f in _py_files(tree)]
    rel = {str(f.relative_to(ROOT)) for f in files}
    assert {"plugins/dqf_plugins/__init__.py", "contrib/dqf_contrib/heuristic/__init__.py",
            "contrib/dqf_contrib/heuristic/heuristic.py"} <= rel
    problems = {str(f.relative_to(ROOT)): v for f in files if (v := plugin_violations(f.read_text(encoding="utf-8")))}
    assert problems == {}
    # The scan is not vacuous: the plugin trees do import dqf.
    assert sum(1 for f in files for _, mod, _ in imported_modules(f.read_text(encoding="utf-8")) if mod == "dqf") >= 3


def test_public_api_names_exist():
    missing = [name for name in dqf.__all__ if not hasattr(dqf, name)]
    assert missing == []


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
    assert _heavy_after("import polars") == ["polars"]


@pytest.mark.parametrize("module", ["dqf", "dqf_plugins", "dqf_contrib.heuristic"])
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
    assert _heavy_after("import dqf\nh = dqf.build_plugin_manager()\nassert 'heuristic' in h.names('scorer')") == []
