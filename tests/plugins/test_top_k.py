"""`top-k` selector: ordering, ties, nulls, fraction rounding and option validation."""

from __future__ import annotations

import polars as pl
import pytest
from pydantic import ValidationError

import dqf
import dqf.registry
from dqf import StepContext


@pytest.fixture(scope="module")
def TopK():
    info = dqf.registry.build_plugin_manager().get("selector", "top-k")
    assert info.provider.distribution == "dqf"
    return info.cls


def pick(cls, values, **opts):
    sel = cls(cls.Options(column="s", **opts))
    frame = pl.DataFrame({"id": [f"r{i}" for i in range(len(values))], "s": values})
    return list(sel.select(frame, StepContext(step_id="t", seed=0, run_dir=None, cache_dir=None)))


VALUES = [3, 1, 4, 1, 5, 9, 2, 6]


def test_descending_by_default(TopK):
    assert pick(TopK, VALUES, k=3) == [5, 7, 4]  # 9, 6, 5


def test_ascending(TopK):
    assert pick(TopK, VALUES, k=3, descending=False) == [1, 3, 6]  # 1, 1, 2


def test_ties_keep_input_order(TopK):
    assert pick(TopK, [2, 2, 2, 2, 2], k=3) == [0, 1, 2]
    assert pick(TopK, [2, 2, 2, 2, 2], k=3, descending=False) == [0, 1, 2]
    assert pick(TopK, [5, 7, 5, 7, 5], k=3) == [1, 3, 0]
    assert pick(TopK, [5, 7, 5, 7, 5], k=3, descending=False) == [0, 2, 4]
    assert pick(TopK, [1.5, 0.5, 1.5, 0.5], k=2, descending=False) == [1, 3]


def test_nulls_rank_last_both_ways(TopK):
    values = [None, 1.0, None, 2.0]
    assert pick(TopK, values, k=3) == [3, 1, 0]
    assert pick(TopK, values, k=3, descending=False) == [1, 3, 0]


def test_nan_ranks_last_not_first(TopK):
    values = [float("nan"), 1.0, 3.0, None, 2.0]
    assert pick(TopK, values, k=3) == [2, 4, 1]
    assert pick(TopK, values, k=3, descending=False) == [1, 4, 2]


def test_k_larger_than_input_keeps_all(TopK):
    assert sorted(pick(TopK, VALUES, k=100)) == list(range(len(VALUES)))


def test_string_column(TopK):
    assert pick(TopK, ["b", "c", "a"], k=2, descending=False) == [2, 0]


@pytest.mark.parametrize("n,fraction,expected", [
    (10, 0.25, 3),   # 2.5 rounds up
    (10, 0.3, 3),
    (100, 0.07, 7),  # 0.07 * 100 is 7.000000000000001 in floats: still 7
    (100, 0.57, 57),
    (100, 0.29, 29),
    (3, 0.5, 2),
    (7, 1.0, 7),
    (1, 0.01, 1),    # a positive fraction of a non-empty input keeps at least one row
    (1000, 0.001, 1),
    (999, 0.1, 100),
])
def test_fraction_rounds_up(TopK, n, fraction, expected):
    assert TopK.Options(column="s", fraction=fraction).budget(n) == expected
    assert len(pick(TopK, list(range(n)), fraction=fraction)) == expected


def test_k_budget(TopK):
    assert TopK.Options(column="s", k=5).budget(3) == 3
    assert TopK.Options(column="s", k=5).budget(50) == 5


@pytest.mark.parametrize("opts,message", [
    ({"column": "s", "k": 3, "fraction": 0.5}, "give exactly one of `k` or `fraction`"),
    ({"column": "s"}, "give exactly one of `k` or `fraction`"),
    ({"column": "s", "k": 0}, "greater than 0"),
    ({"column": "s", "k": -2}, "greater than 0"),
    ({"column": "s", "fraction": 0}, "greater than 0"),
    ({"column": "s", "fraction": 1.5}, "less than or equal to 1"),
    ({"k": 3}, "Field required"),
    ({"column": "s", "k": 3, "top": 3}, "Extra inputs are not permitted"),
])
def test_option_validation(TopK, opts, message):
    with pytest.raises(ValidationError) as err:
        TopK.Options(**opts)
    assert message in str(err.value)


def test_drop_reason(TopK):
    assert TopK(TopK.Options(column="s", k=3)).drop_reason() == "not in top-k by s (descending, k=3)"
    assert TopK(TopK.Options(column="s", fraction=0.2, descending=False)).drop_reason() == \
        "not in top-k by s (ascending, fraction=0.2)"
    assert TopK(TopK.Options(column="q", k=1)).requires() == {"q"}


def test_k_and_fraction_in_a_recipe(tmp_path, write_recipe, write_jsonl, alpaca_rows):
    write_jsonl(alpaca_rows)
    recipe = write_recipe("""
        name = "tk"
        [input]
        path = "pool.jsonl"
        [output]
        dir = "out"
        [[steps]]
        id = "top"
        select = { plugin = "top-k", column = "n_turns", k = 3, fraction = 0.5 }
    """)
    with pytest.raises(dqf.RecipeError) as err:
        dqf.validate(recipe)
    msg = str(err.value)
    assert msg.startswith(f"{recipe}: steps[0].select") and "give exactly one of `k` or `fraction`" in msg


def test_fraction_in_a_run(tmp_path, write_recipe, write_jsonl, alpaca_rows):
    write_jsonl(alpaca_rows)
    recipe = write_recipe("""
        name = "tk"
        [input]
        path = "pool.jsonl"
        [output]
        dir = "out"
        [[steps]]
        id = "h"
        score = { plugin = "heuristic" }
        [[steps]]
        id = "top"
        select = { plugin = "top-k", column = "output_words", fraction = 0.07 }
    """)
    res = dqf.run(recipe)
    assert res.manifest["counts"]["selected"] == 4  # ceil(0.07 * 50) = ceil(3.5)
    sel = res.rows.filter("selected")
    assert set(sel["output_words"]) == {11}
    # ties (all 11 words) keep input order: the first four rows with 11 words
    all11 = res.rows.filter(pl.col("output_words") == 11)["id"].to_list()
    assert sel["id"].to_list() == all11[:4]
