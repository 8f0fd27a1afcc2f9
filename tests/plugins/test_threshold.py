"""`threshold` selector: inclusive and exclusive bounds, one-sided ranges, nulls and NaN dropped."""

from __future__ import annotations

import json

import polars as pl
import pytest
from pydantic import ValidationError

import dqf
import dqf.registry
from dqf import StepContext


@pytest.fixture(scope="module")
def Threshold():
    info = dqf.registry.build_plugin_manager().get("selector", "threshold")
    assert info.provider.distribution == "dqf"
    return info.cls


def ctx(tmp_path=None):
    return StepContext(step_id="t", seed=0, run_dir=tmp_path, cache_dir=tmp_path)


def pick(cls, values, **opts):
    sel = cls(cls.Options(column="s", **opts))
    frame = pl.DataFrame({"id": [f"r{i}" for i in range(len(values))], "s": values})
    mask = sel.select(frame, ctx())
    assert isinstance(mask, pl.Series) and mask.dtype == pl.Boolean and mask.len() == len(values)
    assert mask.null_count() == 0
    return mask.to_list()


VALUES = [0.0, 1.0, 1.5, 3.0, 4.0, None]


def test_inclusive_bounds(Threshold):
    assert pick(Threshold, VALUES, min=1, max=3) == [False, True, True, True, False, False]


def test_exclusive_bounds(Threshold):
    assert pick(Threshold, VALUES, min=1, max=3, inclusive=False) == [False, False, True, False, False, False]


def test_min_only_and_max_only(Threshold):
    assert pick(Threshold, VALUES, min=1.5) == [False, False, True, True, True, False]
    assert pick(Threshold, VALUES, max=1.0) == [True, True, False, False, False, False]
    assert pick(Threshold, VALUES, max=1.0, inclusive=False) == [True, False, False, False, False, False]


def test_equal_min_and_max(Threshold):
    assert pick(Threshold, VALUES, min=3, max=3) == [False, False, False, True, False, False]
    assert pick(Threshold, VALUES, min=3, max=3, inclusive=False) == [False] * 6


def test_nulls_and_nan_are_dropped(Threshold):
    values = [None, float("nan"), 2.0, float("inf"), float("-inf")]
    assert pick(Threshold, values, min=0) == [False, False, True, True, False]
    assert pick(Threshold, values, max=10) == [False, False, True, False, True]


def test_integer_column(Threshold):
    assert pick(Threshold, [1, 5, 10, None], min=5, max=10, inclusive=False) == [False, False, False, False]
    assert pick(Threshold, [1, 5, 10, None], min=5) == [False, True, True, False]


def test_requires_its_column(Threshold):
    assert Threshold(Threshold.Options(column="perplexity", max=5)).requires() == {"perplexity"}


def test_drop_reason(Threshold):
    assert Threshold(Threshold.Options(column="s", min=1, max=3)).drop_reason() == "s not in [1.0, 3.0]"
    assert Threshold(Threshold.Options(column="s", min=1, inclusive=False)).drop_reason() == "s not in (1.0, inf)"
    assert Threshold(Threshold.Options(column="s", max=2)).drop_reason() == "s not in [-inf, 2.0]"


@pytest.mark.parametrize("opts,message", [
    ({"column": "s"}, "give `min`, `max` or both"),
    ({"column": "s", "min": 3, "max": 1}, "`min` (3.0) is greater than `max` (1.0)"),
    ({"column": "s", "min": 1, "minimum": 2}, "Extra inputs are not permitted"),
    ({"min": 1}, "Field required"),
    ({"column": "s", "min": "low"}, "valid number"),
])
def test_option_validation(Threshold, opts, message):
    with pytest.raises(ValidationError) as err:
        Threshold.Options(**opts)
    assert message in str(err.value)


def test_in_a_recipe(tmp_path, write_jsonl, write_recipe, alpaca_rows):
    write_jsonl(alpaca_rows)
    recipe = write_recipe("""
        name = "thr"
        [input]
        path = "pool.jsonl"
        [output]
        dir = "out"
        [[steps]]
        id = "h"
        score = { plugin = "heuristic" }
        [[steps]]
        id = "band"
        select = { plugin = "threshold", column = "output_words", min = 7, max = 9, inclusive = false }
    """)
    res = dqf.run(recipe)
    rows = res.rows
    assert set(rows.filter("selected")["output_words"]) == {8}
    assert rows.filter("selected").height == sum(1 for i in range(50) if i % 7 + 5 == 8)
    assert set(rows.filter(~pl.col("selected"))["reason"]) == {"output_words not in (7.0, 9.0)"}
    lines = (tmp_path / "out" / "selected.jsonl").read_text().splitlines()
    assert all(len(json.loads(line)["output"].split()) == 8 for line in lines)


def test_bad_options_in_a_recipe(tmp_path, write_jsonl, write_recipe, alpaca_rows):
    write_jsonl(alpaca_rows)
    recipe = write_recipe("""
        name = "thr"
        [input]
        path = "pool.jsonl"
        [output]
        dir = "out"
        [[steps]]
        id = "band"
        select = { plugin = "threshold", column = "n_turns" }
    """)
    with pytest.raises(dqf.RecipeError) as err:
        dqf.validate(recipe)
    assert "steps[0].select" in str(err.value) and "give `min`, `max` or both" in str(err.value)
