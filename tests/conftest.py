"""Shared fixtures: an isolated score cache per test and helpers to write recipes and data."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/tiny_models.py


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """No test reads or writes the user's real cache."""
    cache = tmp_path / "_cache"
    monkeypatch.setenv("DQF_CACHE_DIR", str(cache))
    return cache


@pytest.fixture
def write_jsonl(tmp_path):
    def _write(rows, name="pool.jsonl"):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return path

    return _write


@pytest.fixture
def write_recipe(tmp_path):
    def _write(text, name="recipe.toml"):
        path = tmp_path / name
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return _write


@pytest.fixture
def alpaca_rows():
    return [
        {"instruction": f"Explain topic number {i}.", "input": "" if i % 3 else f"context {i}",
         "output": " ".join(["word"] * (i % 7) + [f"answer{i}", "is", "here", "and", "complete"])}
        for i in range(50)
    ]


EXAMPLE_POOL = Path(__file__).resolve().parents[1] / "examples" / "data" / "alpaca_2k.jsonl"


@pytest.fixture
def example_pool():
    return EXAMPLE_POOL


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Folders holding tiny random models (built once per session), loadable with from_pretrained."""
    import tiny_models as tm

    root = tmp_path_factory.mktemp("tiny_models")
    return {
        "deberta": tm.tiny_deberta_classifier(root / "deberta"),
        "bert": tm.tiny_bert(root / "bert"),
        "llama": tm.tiny_llama(root / "llama"),
    }
