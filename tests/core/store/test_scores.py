"""Score cache: reruns reuse scores, only what changed is recomputed, and the cache can be cleared or bypassed.

The scorers here live in a real local plugin module (written into the test's folder and loaded
through the recipe's ``plugins`` list); each appends one line per row it scores to a counter file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

import dqf

PLUGIN = '''
from pathlib import Path

import dqf

HERE = Path(__file__).parent


def _count(name, batch):
    with open(HERE / name, "a", encoding="utf-8") as fh:
        for rid in batch["id"]:
            fh.write(rid + "\\n")


class LenOptions(dqf.PluginOptions):
    scale: int = 1


class CountingLen(dqf.Scorer):
    """Output length times `scale`; logs every row it scores to len_calls.txt."""

    name = "counting-len"
    Options = LenOptions
    batch_size = 7

    def columns(self):
        import polars as pl
        return {"len_score": pl.Int64}

    def score(self, batch):
        import polars as pl
        _count("len_calls.txt", batch)
        return batch.select((pl.col("output").str.len_chars() * self.options.scale).cast(pl.Int64).alias("len_score"))


class WordOptions(dqf.PluginOptions):
    offset: int = 0


class CountingWords(dqf.Scorer):
    """Output word count plus `offset`; logs every row it scores to words_calls.txt."""

    name = "counting-words"
    Options = WordOptions

    def columns(self):
        import polars as pl
        return {"words_score": pl.Int64}

    def score(self, batch):
        import polars as pl
        _count("words_calls.txt", batch)
        return batch.select((pl.col("output").str.count_matches(r"\\S+") + self.options.offset)
                            .cast(pl.Int64).alias("words_score"))


@dqf.hookimpl
def dqf_register_scorers(register):
    register(CountingLen)
    register(CountingWords)
'''

RECIPE = """
name = "cache-test"
plugins = ["counting.py"]

[input]
path = "pool.jsonl"

[output]
dir = "out"

[[steps]]
id = "len"
score = {{ plugin = "counting-len", scale = {scale} }}

[[steps]]
id = "words"
score = {{ plugin = "counting-words", offset = {offset} }}
where = "words_score >= {min_words}"

[[steps]]
id = "top"
select = {{ plugin = "top-k", column = "len_score", k = {k} }}
"""


@pytest.fixture
def setup(tmp_path, write_jsonl, write_recipe, alpaca_rows):
    (tmp_path / "counting.py").write_text(PLUGIN, encoding="utf-8")
    write_jsonl(alpaca_rows)

    def recipe(scale=1, offset=0, min_words=7, k=10):
        return write_recipe(RECIPE.format(scale=scale, offset=offset, min_words=min_words, k=k))

    return recipe


def calls(tmp_path, which: str) -> list[str]:
    path = tmp_path / f"{which}_calls.txt"
    return path.read_text().splitlines() if path.exists() else []


def step(manifest, step_id):
    return next(s for s in manifest["steps"] if s["id"] == step_id)


def test_rerun_scores_nothing(tmp_path, setup, alpaca_rows):
    first = dqf.run(setup())
    n = len(alpaca_rows)
    assert len(calls(tmp_path, "len")) == n and len(calls(tmp_path, "words")) == n
    assert set(calls(tmp_path, "len")) == set(first.rows["id"])
    assert step(first.manifest, "len")["cache"] == {"hits": 0, "computed": n}
    assert step(first.manifest, "words")["cache"] == {"hits": 0, "computed": n}

    second = dqf.run(setup())
    assert len(calls(tmp_path, "len")) == n and len(calls(tmp_path, "words")) == n  # no new scoring
    assert step(second.manifest, "len")["cache"] == {"hits": n, "computed": 0}
    assert step(second.manifest, "words")["cache"] == {"hits": n, "computed": 0}
    assert second.rows.equals(first.rows)
    # cached values are the real ones
    expected = {r["output"]: len(r["output"]) for r in alpaca_rows}
    by_id = dict(zip(second.rows["id"], second.rows["len_score"]))
    assert sorted(by_id.values()) == sorted(expected.values())


def test_changing_selector_or_where_does_not_rescore(tmp_path, setup, alpaca_rows):
    n = len(alpaca_rows)
    base = dqf.run(setup())
    assert base.manifest["counts"]["selected"] == 10
    fewer = dqf.run(setup(k=4))
    assert fewer.manifest["counts"]["selected"] == 4
    stricter = dqf.run(setup(min_words=10))
    assert step(stricter.manifest, "words")["rows_out"] < step(base.manifest, "words")["rows_out"]
    assert len(calls(tmp_path, "len")) == n and len(calls(tmp_path, "words")) == n
    for res in (fewer, stricter):
        assert step(res.manifest, "len")["cache"] == {"hits": n, "computed": 0}
        assert step(res.manifest, "words")["cache"] == {"hits": n, "computed": 0}


def test_changing_a_scorer_option_recomputes_only_that_scorer(tmp_path, setup, alpaca_rows):
    n = len(alpaca_rows)
    base = dqf.run(setup())
    scaled = dqf.run(setup(scale=3))
    assert len(calls(tmp_path, "len")) == 2 * n
    assert len(calls(tmp_path, "words")) == n
    assert step(scaled.manifest, "len")["cache"] == {"hits": 0, "computed": n}
    assert step(scaled.manifest, "words")["cache"] == {"hits": n, "computed": 0}
    assert (scaled.rows["len_score"] == base.rows["len_score"] * 3).all()

    shifted = dqf.run(setup(scale=3, offset=2))
    assert len(calls(tmp_path, "len")) == 2 * n
    assert len(calls(tmp_path, "words")) == 2 * n
    assert step(shifted.manifest, "len")["cache"] == {"hits": n, "computed": 0}
    assert (shifted.rows["words_score"] == base.rows["words_score"] + 2).all()

    # going back to the first options hits the first entries again
    again = dqf.run(setup())
    assert len(calls(tmp_path, "len")) == 2 * n and len(calls(tmp_path, "words")) == 2 * n
    assert again.rows.equals(base.rows)


def test_no_cache_recomputes_and_stores_nothing(tmp_path, setup, alpaca_rows, isolated_cache):
    n = len(alpaca_rows)
    res = dqf.run(setup(), use_cache=False)
    assert len(calls(tmp_path, "len")) == n
    assert step(res.manifest, "len")["cache"] == {"hits": 0, "computed": n}
    assert res.manifest["cache"]["enabled"] is False
    assert not isolated_cache.exists() or not list(isolated_cache.rglob("*.parquet"))

    dqf.run(setup())  # fills the cache
    assert len(calls(tmp_path, "len")) == 2 * n
    res = dqf.run(setup(), use_cache=False)  # ignores the filled cache
    assert len(calls(tmp_path, "len")) == 3 * n and len(calls(tmp_path, "words")) == 3 * n
    assert step(res.manifest, "words")["cache"] == {"hits": 0, "computed": n}


def test_cache_disabled_in_recipe(tmp_path, setup, alpaca_rows):
    n = len(alpaca_rows)
    path = setup()
    path.write_text(path.read_text() + "\n[cache]\nenabled = false\n")
    dqf.run(path)
    dqf.run(path)
    assert len(calls(tmp_path, "len")) == 2 * n


def test_no_cache_flag_on_the_command_line(tmp_path, setup, alpaca_rows):
    n = len(alpaca_rows)
    recipe = setup()
    dqf.run(recipe)
    proc = subprocess.run([_dqf(), "run", str(recipe), "--no-cache"], capture_output=True, text=True,
                          env=os.environ.copy(), cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(calls(tmp_path, "len")) == 2 * n
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert step(manifest, "len")["cache"] == {"hits": 0, "computed": n}


def _dqf() -> str:
    exe = shutil.which("dqf", path=str(Path(sys.executable).parent)) or shutil.which("dqf")
    assert exe, "the dqf console script is not installed"
    return exe


def test_cache_dir_option_and_clear(tmp_path, setup, alpaca_rows, isolated_cache):
    n = len(alpaca_rows)
    cache = tmp_path / "my-cache"
    res = dqf.run(setup(), cache_dir=cache)
    assert res.manifest["cache"]["dir"] == str(cache)
    shards = list((cache / "scores").rglob("*.parquet"))
    assert shards
    assert {p.relative_to(cache / "scores").parts[0] for p in shards} == {"counting-len", "counting-words"}
    assert not isolated_cache.exists()  # the default cache was not touched

    dqf.run(setup(), cache_dir=cache)
    assert len(calls(tmp_path, "len")) == n

    proc = subprocess.run([_dqf(), "cache", "clear", "--cache-dir", str(cache)], capture_output=True, text=True,
                          env=os.environ.copy(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"cleared {cache} (")
    assert not cache.exists() or not any(p.is_file() for p in cache.rglob("*"))

    res = dqf.run(setup(), cache_dir=cache)
    assert len(calls(tmp_path, "len")) == 2 * n
    assert step(res.manifest, "len")["cache"] == {"hits": 0, "computed": n}


def test_cache_dir_in_recipe_is_relative_to_recipe(tmp_path, setup, alpaca_rows):
    path = setup()
    path.write_text(path.read_text() + '\n[cache]\ndir = "recipe-cache"\n')
    dqf.run(path)
    assert list((tmp_path / "recipe-cache" / "scores" / "counting-len").rglob("*.parquet"))


def test_partially_cached_input_scores_only_new_rows(tmp_path, setup, alpaca_rows, write_jsonl):
    old, new = alpaca_rows[:30], alpaca_rows[30:]
    write_jsonl(old)
    first = dqf.run(setup())
    old_ids = set(first.rows["id"])
    assert len(calls(tmp_path, "len")) == 30

    write_jsonl(new[:5] + old + new[5:])  # new rows before and after the old ones
    second = dqf.run(setup())
    len_calls = calls(tmp_path, "len")
    assert len(len_calls) == 50
    assert set(len_calls[30:]) == set(second.rows["id"]) - old_ids
    assert len(set(len_calls[30:])) == 20
    assert step(second.manifest, "len")["cache"] == {"hits": 30, "computed": 20}
    assert step(second.manifest, "words")["cache"] == {"hits": 30, "computed": 20}
    # mixed cached and fresh scores end up on the right rows
    outputs = [r["output"] for r in new[:5] + old + new[5:]]
    assert second.rows["len_score"].to_list() == [len(o) for o in outputs]


def test_cache_serves_a_subset_step(tmp_path, write_jsonl, write_recipe, alpaca_rows):
    """A scorer fed by a filter sees only the surviving rows; widening the filter scores only the newcomers."""
    (tmp_path / "counting.py").write_text(PLUGIN, encoding="utf-8")
    write_jsonl(alpaca_rows)
    text = """
        name = "subset"
        plugins = ["counting.py"]
        [input]
        path = "pool.jsonl"
        [output]
        dir = "out"
        [[steps]]
        id = "words"
        score = {{ plugin = "counting-words" }}
        where = "words_score >= {w}"
        [[steps]]
        id = "len"
        score = {{ plugin = "counting-len" }}
    """
    res = dqf.run(write_recipe(text.format(w=10)))
    n10 = int((res.rows["words_score"] >= 10).sum())
    assert 0 < n10 < 50
    assert len(calls(tmp_path, "len")) == n10
    assert res.rows.filter(pl.col("words_score") < 10)["len_score"].null_count() == 50 - n10
    res = dqf.run(write_recipe(text.format(w=8)))
    n8 = int((res.rows["words_score"] >= 8).sum())
    assert n8 > n10
    assert len(calls(tmp_path, "len")) == n8
    assert step(res.manifest, "len")["cache"] == {"hits": n10, "computed": n8 - n10}


DERIVED_PLUGIN = '''
import dqf


class DoubleLen(dqf.Scorer):
    """Twice len_score: reads a column an earlier step produced."""

    name = "double-len"

    def requires(self):
        return {"len_score"}

    def columns(self):
        import polars as pl
        return {"double_len": pl.Int64}

    def score(self, batch):
        import polars as pl
        return batch.select((pl.col("len_score") * 2).alias("double_len"))


@dqf.hookimpl
def dqf_register_scorers(register):
    register(DoubleLen)
'''


def test_scorer_reading_an_upstream_column_recomputes_when_the_upstream_changes(tmp_path, write_jsonl, write_recipe,
                                                                                alpaca_rows):
    (tmp_path / "counting.py").write_text(PLUGIN, encoding="utf-8")
    (tmp_path / "derived.py").write_text(DERIVED_PLUGIN, encoding="utf-8")
    write_jsonl(alpaca_rows)
    text = """
        name = "derived"
        plugins = ["counting.py", "derived.py"]
        [input]
        path = "pool.jsonl"
        [output]
        dir = "out"
        [[steps]]
        id = "len"
        score = {{ plugin = "counting-len", scale = {scale} }}
        [[steps]]
        id = "double"
        score = {{ plugin = "double-len" }}
    """
    expected = {r["output"]: len(r["output"]) for r in alpaca_rows}
    for scale in (1, 3, 1):
        result = dqf.run(write_recipe(text.format(scale=scale)))
        rows = result.rows.join(result.selected.select("id", "output"), on="id")
        for out, dbl in zip(rows["output"], rows["double_len"]):
            assert dbl == 2 * scale * expected[out]  # a stale cached value from another scale would fail here
    # The last run (scale=1 again) is served from the cache entry of the first.
    assert result.manifest["steps"][1]["cache"] == {"hits": len(alpaca_rows), "computed": 0}


def _shards(cache: Path, plugin: str) -> list[Path]:
    return sorted((cache / "scores" / plugin).rglob("*.parquet"))


def test_a_step_that_left_many_shards_merges_them_and_reruns_still_hit(tmp_path, setup, write_jsonl, isolated_cache):
    # counting-len scores 7 rows per batch, one cache shard each: 600 rows leave 86 shards, past COMPACT_ABOVE
    rows = [{"instruction": f"Explain topic {i}.", "output": " ".join(["word"] * (i % 11 + 1))} for i in range(600)]
    write_jsonl(rows)
    first = dqf.run(setup())
    assert step(first.manifest, "len")["cache"] == {"hits": 0, "computed": 600, "shards_merged": 86}
    assert step(first.manifest, "words")["cache"] == {"hits": 0, "computed": 600}  # one batch: nothing to merge
    assert len(_shards(isolated_cache, "counting-len")) == 1
    second = dqf.run(setup())
    assert len(calls(tmp_path, "len")) == 600  # nothing scored again
    assert step(second.manifest, "len")["cache"] == {"hits": 600, "computed": 0}
    assert second.rows.equals(first.rows)


def test_compact_keeps_what_load_returns_and_leaves_unreadable_shards(tmp_path):
    from dqf.store.scores import CacheEntry

    class Plugin:
        def describe(self):
            return {"name": "fake"}

    entry = CacheEntry(tmp_path / "entry", Plugin())
    for i in range(6):  # ids overlap between shards, as when two runs scored the same rows at once
        entry.write(pl.DataFrame({"id": [f"r{j}" for j in range(i, i + 3)], "v": [i * 10 + j for j in range(3)]}))
    (tmp_path / "entry" / "zz-old.parquet").write_bytes(b"not parquet")
    want = entry.load(["v"]).sort("id")
    assert entry.compact(above=10) == 0  # 7 files: under the limit, untouched
    assert entry.compact(above=3) == 6
    left = sorted(p.name for p in (tmp_path / "entry").glob("*.parquet"))
    assert len(left) == 2 and left[0].startswith("0000-merged-") and left[1] == "zz-old.parquet"
    assert entry.load(["v"]).sort("id").equals(want)
    assert want.height == 8
