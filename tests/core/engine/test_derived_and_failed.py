"""Scorer contract extras: the derived `turns` column, and rows a scorer marks failed (`dqf.FAILED_COLUMN`) stay uncached."""

from __future__ import annotations

import json

import pytest

import dqf
from dqf.io.readers import derive_column
from dqf.io.rows import conversation

PLUGIN = '''
from pathlib import Path

import dqf

HERE = Path(__file__).parent


class TurnCount(dqf.Scorer):
    """Reads the derived `turns` column: number of turns and the roles in order."""

    name = "turn-count"

    def requires(self):
        return {"turns"}

    def columns(self):
        import polars as pl
        return {"n_all_turns": pl.Int64, "roles": pl.String}

    def score(self, batch):
        import polars as pl
        return batch.select(pl.col("turns").list.len().cast(pl.Int64).alias("n_all_turns"),
                            pl.col("turns").list.eval(pl.element().struct.field("role")).list.join(",").alias("roles"))


class Flaky(dqf.Scorer):
    """Fails (null, not cached) on rows whose output holds "fail" while the file `down` exists."""

    name = "flaky-len"

    def columns(self):
        import polars as pl
        return {"flaky_len": pl.Int64}

    def score(self, batch):
        import polars as pl
        with open(HERE / "flaky_calls.txt", "a") as fh:
            fh.writelines(i + "\\n" for i in batch["id"])
        down = (HERE / "down").exists()
        bad = batch["output"].str.contains("fail") & down
        n = batch["output"].str.len_chars().cast(pl.Int64)
        return pl.DataFrame({"flaky_len": n.zip_with(~bad, pl.Series([None] * len(n), dtype=pl.Int64)),
                             dqf.FAILED_COLUMN: bad})


class TurnsSelector(dqf.Selector):
    name = "turns-selector"

    def requires(self):
        return {"turns"}

    def select(self, rows, context):
        return list(range(rows.height))


@dqf.hookimpl
def dqf_register_scorers(register):
    register(TurnCount)
    register(Flaky)


@dqf.hookimpl
def dqf_register_selectors(register):
    register(TurnsSelector)
'''

HEAD = 'name = "t"\nplugins = ["extra.py"]\n[input]\npath = "pool.jsonl"\n[output]\ndir = "out"\n'


@pytest.fixture
def plugin(tmp_path):
    (tmp_path / "extra.py").write_text(PLUGIN, encoding="utf-8")


def test_conversation_and_derived_turns_column():
    chat = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                         {"role": "assistant", "content": [{"type": "text", "text": "a"}]}]}
    assert conversation(chat) == [("system", "s"), ("user", "q"), ("assistant", "a")]
    alpaca = {"instruction": "do", "input": "this", "output": "done"}
    assert conversation(alpaca) == [("user", "do\nthis"), ("assistant", "done")]
    col = derive_column("turns", [json.dumps(chat), None, json.dumps(alpaca)])
    assert col.name == "turns" and col[1] is None
    assert col[2].to_list() == [{"role": "user", "content": "do\nthis"}, {"role": "assistant", "content": "done"}]


def test_scorer_gets_turns_of_every_row_kind(tmp_path, plugin, write_jsonl, write_recipe):
    write_jsonl([
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"},
                           {"from": "human", "value": "more"}, {"from": "gpt", "value": "sure"}]},
        {"instruction": "do", "input": "", "output": "done"},
    ])
    res = dqf.run(write_recipe(HEAD + '[[steps]]\nid = "t"\nscore = { plugin = "turn-count" }\n'))
    assert res.rows["n_all_turns"].to_list() == [4, 2]
    assert res.rows["roles"].to_list() == ["user,assistant,user,assistant", "user,assistant"]
    assert "turns" not in res.rows.columns and "turns" not in res.selected.columns  # never kept in the table


def test_turns_is_for_scorers_only_and_not_a_step_column(tmp_path, plugin, write_jsonl, write_recipe):
    write_jsonl([{"instruction": "do", "input": "", "output": "done"}])
    with pytest.raises(dqf.RecipeError) as err:
        dqf.validate(write_recipe(HEAD + '[[steps]]\nid = "s"\nselect = { plugin = "turns-selector" }\n'))
    assert "needs column 'turns'" in str(err.value)


def test_rows_marked_failed_are_used_but_not_cached(tmp_path, plugin, write_jsonl, write_recipe):
    write_jsonl([{"instruction": f"i{k}", "input": "", "output": "fail" if k == 1 else f"ok {k}"} for k in range(3)])
    (tmp_path / "down").touch()
    recipe = write_recipe(HEAD + '[[steps]]\nid = "f"\nscore = { plugin = "flaky-len" }\n')
    res = dqf.run(recipe)
    assert res.rows["flaky_len"].to_list() == [4, None, 4]
    assert res.manifest["steps"][0]["cache"] == {"hits": 0, "computed": 3, "failed": 1}
    (tmp_path / "down").unlink()
    res = dqf.run(recipe)
    assert res.rows["flaky_len"].to_list() == [4, 4, 4]
    assert res.manifest["steps"][0]["cache"] == {"hits": 2, "computed": 1}
    assert len((tmp_path / "flaky_calls.txt").read_text().splitlines()) == 4
    assert dqf.run(recipe).manifest["steps"][0]["cache"] == {"hits": 3, "computed": 0}
