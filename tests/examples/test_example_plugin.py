"""Installs examples/dqf-example-plugin for real (pip, entry points) and runs it through the `dqf` CLI."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "dqf-example-plugin"
RECIPE = EXAMPLE / "recipe.toml"
POOL = REPO / "examples" / "data" / "alpaca_2k.jsonl"
WORDS = ["python", "code", "function", "algorithm"]  # as in examples/dqf-example-plugin/recipe.toml


def _dqf_cmd() -> list[str]:
    exe = shutil.which("dqf", path=str(Path(sys.executable).parent)) or shutil.which("dqf")
    return [exe] if exe else [sys.executable, "-c", "from dqf.cli import main; main()"]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The example package installed with pip into a private folder (put on PYTHONPATH to use it)."""
    try:
        import hatchling  # noqa: F401  (--no-build-isolation builds with the hatchling in this environment)
    except ImportError:
        pytest.fail("hatchling is not installed; it is needed to build examples/dqf-example-plugin: "
                    "pip install 'hatchling>=1.18' (it belongs in dqf's `test` extra)")
    target = tmp_path_factory.mktemp("example-plugin") / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--target", str(target), str(EXAMPLE)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, f"pip install failed:\n{proc.stdout}\n{proc.stderr}"
    assert list(target.glob("dqf_example_plugin-*.dist-info/entry_points.txt")), "no entry points were installed"
    return target


def _dqf(site: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)  # carries DQF_CACHE_DIR from the autouse isolated_cache fixture
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH", "")) if p)
    return subprocess.run([*_dqf_cmd(), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def _expected_hits(record: dict) -> int:
    """Count the recipe's words independently of the plugin: Python `re`, whole words, case-insensitive."""
    text = record["instruction"] + "\n" + record["output"]
    return sum(len(re.findall(rf"\b{re.escape(w)}\b", text, flags=re.IGNORECASE)) for w in WORDS)


def test_recipe_uses_the_words_this_test_checks():
    import tomllib

    step = tomllib.loads(RECIPE.read_text(encoding="utf-8"))["steps"][0]
    assert step["score"] == {"plugin": "keyword", "words": WORDS, "field": "both"}


def test_plugins_json_lists_keyword_from_the_installed_distribution(site):
    proc = _dqf(site, "plugins", "--json")
    assert proc.returncode == 0, proc.stderr
    by_name = {p["name"]: p for p in json.loads(proc.stdout)}
    kw = by_name["keyword"]
    assert kw["kind"] == "scorer"
    assert kw["class"] == "KeywordScorer"
    assert kw["distribution"] == "dqf-example-plugin"
    assert kw["distribution_version"] == "0.1.0"
    assert kw["module"] == "dqf_example_plugin.keyword"
    assert set(kw["options_schema"]["properties"]) == {"words", "field"}
    assert kw["options_schema"]["required"] == ["words"]


def test_without_the_package_the_recipe_does_not_validate():
    import importlib.metadata

    try:
        importlib.metadata.distribution("dqf-example-plugin")
    except importlib.metadata.PackageNotFoundError:
        pass
    else:
        pytest.skip("dqf-example-plugin is installed in this environment")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([*_dqf_cmd(), "validate", str(RECIPE)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "unknown scorer 'keyword'" in proc.stderr


def test_run_writes_keyword_hits_that_match_an_independent_count(site, tmp_path, isolated_cache):
    out = tmp_path / "run"
    proc = _dqf(site, "run", str(RECIPE), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).resolve() == out.resolve()

    rows = pl.read_parquet(out / "rows.parquet")
    assert rows.schema["keyword_hits"] == pl.Int32
    assert rows.height == 2000  # the score step reads every input row, so every row has a count

    records = POOL.read_text(encoding="utf-8").splitlines()
    line_of = rows["source"].str.extract(r":(\d+)$").cast(pl.Int64)
    expected = [_expected_hits(json.loads(records[n - 1])) for n in line_of.to_list()]
    assert rows["keyword_hits"].to_list() == expected
    assert sum(expected) > 0 and max(expected) >= 3  # the check is not vacuous

    # The recipe keeps rows with a hit, then the 50 with the most hits.
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    with_hits = sum(1 for e in expected if e > 0)
    assert manifest["steps"][0]["rows_out"] == with_hits
    assert manifest["counts"]["selected"] == min(50, with_hits)
    assert rows.filter(pl.col("selected"))["keyword_hits"].min() >= 1
    no_hit = rows.filter(pl.col("keyword_hits") == 0)
    assert set(no_hit["dropped_by"].to_list()) == {"keywords"}
    assert set(no_hit["reason"].to_list()) == {"where: keyword_hits > 0"}
    plugin = next(p for p in manifest["plugins"] if p["plugin"] == "keyword")
    assert plugin["distribution"] == "dqf-example-plugin"
    assert plugin["options"] == {"words": WORDS, "field": "both"}

    # Scores were cached under the test's DQF_CACHE_DIR; a rerun computes nothing.
    assert list((isolated_cache / "scores" / "keyword").glob("*/*.parquet"))
    again = _dqf(site, "run", str(RECIPE), "--out", str(tmp_path / "again"))
    assert again.returncode == 0, again.stderr
    cache = json.loads((tmp_path / "again" / "manifest.json").read_text(encoding="utf-8"))["steps"][0]["cache"]
    assert cache == {"hits": 2000, "computed": 0}
