"""The baseline recipes in recipes/ validate; the fast ones (random-k, longest-k) run end to end."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

import dqf

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
BASELINES = ["random-k", "longest-k", "alpagasus", "superfiltering", "deita"]


@pytest.mark.parametrize("name", BASELINES)
def test_baseline_validates(name):
    recipe = dqf.validate(RECIPES / f"{name}.toml")
    assert recipe.name == name


def copy_to(tmp_path, name):
    """The recipe with its data path made absolute and its output moved under tmp_path."""
    text = (RECIPES / f"{name}.toml").read_text(encoding="utf-8")
    data = (RECIPES / "../examples/data/alpaca_2k.jsonl").resolve()
    text = text.replace('"../examples/data/alpaca_2k.jsonl"', json.dumps(str(data)))
    text = text.replace(f'"../runs/{name}"', json.dumps(str(tmp_path / "out")))
    path = tmp_path / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def selected(tmp_path):
    return pl.read_ndjson(next((tmp_path / "out").rglob("selected*.jsonl")))


def test_random_k_runs(tmp_path):
    dqf.run(copy_to(tmp_path, "random-k"))
    assert selected(tmp_path).height == 1000


def test_longest_k_runs(tmp_path, example_pool):
    dqf.run(copy_to(tmp_path, "longest-k"))
    out = selected(tmp_path)
    assert out.height == 1000
    lengths = sorted((len(json.loads(line)["output"]) for line in example_pool.read_text(encoding="utf-8").splitlines()),
                     reverse=True)
    assert min(len(o) for o in out["output"]) >= lengths[1100]
