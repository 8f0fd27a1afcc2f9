"""`Plugin.close()`: a scorer's model is released right after its step (before the next step loads one), a failing
step's too, and every other plugin the run set up when the run ends."""

from __future__ import annotations

import pytest

import dqf

PLUGIN = '''
from pathlib import Path

import dqf

LOG = Path(__file__).parent / "events.txt"


def log(event):
    with open(LOG, "a") as fh:
        fh.write(event + "\\n")


class Loaded(dqf.Scorer):
    """Logs setup/score/close; fails its batch when the instruction says so."""

    name = "loaded"

    class Options(dqf.PluginOptions):
        column: str = "x"

    def columns(self):
        import polars as pl
        return {self.options.column: pl.Int64}

    def setup(self):
        log(f"setup {self.options.column}")

    def score(self, batch):
        import polars as pl
        log(f"score {self.options.column}")
        if (batch["instruction"] == f"break {self.options.column}").any():
            raise dqf.DqfError(f"{self.options.column} broke")
        return pl.DataFrame({self.options.column: batch["output"].str.len_chars().cast(pl.Int64)})

    def close(self):
        log(f"close {self.options.column}")


class ScoringSelector(dqf.Selector):
    """Scores rows through a nested scorer of its own (context.score), then keeps them all."""

    name = "scoring-selector"
    nested_plugins = {"scorer": "scorer"}

    class Options(dqf.PluginOptions):
        scorer: dqf.PluginSpec

    def select(self, rows, context):
        context.score(self.nested_plugin("scorer"), rows)
        return list(range(rows.height))


@dqf.hookimpl
def dqf_register_scorers(register):
    register(Loaded)


@dqf.hookimpl
def dqf_register_selectors(register):
    register(ScoringSelector)
'''

HEAD = 'name = "t"\nplugins = ["extra.py"]\n[input]\npath = "pool.jsonl"\n[output]\ndir = "out"\n[cache]\nenabled = false\n'
STEPS = """
[[steps]]
id = "a"
score = { plugin = "loaded", column = "a" }
[[steps]]
id = "pick"
select = { plugin = "scoring-selector", scorer = { plugin = "loaded", column = "n" } }
[[steps]]
id = "b"
score = { plugin = "loaded", column = "b" }
"""


@pytest.fixture
def events(tmp_path):
    (tmp_path / "extra.py").write_text(PLUGIN, encoding="utf-8")
    return lambda: (tmp_path / "events.txt").read_text(encoding="utf-8").split()


def test_each_scorer_is_closed_after_its_step_and_nested_plugins_when_the_run_ends(events, write_jsonl, write_recipe):
    write_jsonl([{"instruction": f"i{k}", "input": "", "output": "o" * k} for k in range(3)])
    res = dqf.run(write_recipe(HEAD + STEPS))
    assert res.rows["b"].to_list() == [0, 1, 2]
    pairs = list(zip(events()[::2], events()[1::2]))
    assert pairs == [("setup", "a"), ("score", "a"), ("close", "a"),
                     ("setup", "n"), ("score", "n"),
                     ("setup", "b"), ("score", "b"), ("close", "b"),
                     ("close", "n")]  # the selector's scorer: the run's end


def test_a_failing_step_still_releases_what_it_loaded(events, write_jsonl, write_recipe):
    write_jsonl([{"instruction": "break a", "input": "", "output": "o"}])
    with pytest.raises(dqf.DqfError, match="a broke"):
        dqf.run(write_recipe(HEAD + STEPS))
    assert events() == ["setup", "a", "score", "a", "close", "a"]
