"""End-to-end runs of ``dqf.run``: every row accounted for, outputs in every format, errors as one line."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

import dqf
from dqf import DqfError
from dqf.io.rows import row_id

#: Their recipes name the `words` scorer as a local module: plugins = ["words.py"].
pytestmark = pytest.mark.usefixtures("words_module")

REPO = Path(__file__).resolve().parents[3]
QUICKSTART = REPO / "recipes" / "quickstart.toml"

RECIPE = """
name = "accounting"
plugins = ["words.py"]
seed = 3

[input]
path = "pool.jsonl"
on_bad_row = "quarantine"

[output]
dir = "out"
format = "{fmt}"

[[steps]]
id = "quality"
score = {{ plugin = "words" }}
where = "output_words >= 7"

[[steps]]
id = "top"
select = {{ plugin = "top-k", column = "output_words", k = {k} }}
"""


def words(i: int) -> int:
    """output_words of alpaca_rows[i] (see conftest: i % 7 fillers plus five words)."""
    return i % 7 + 5


@pytest.fixture
def pool(tmp_path, alpaca_rows):
    """50 good rows with an extra field, one exact duplicate, two bad rows (lines 52 and 53)."""
    rows = [dict(r, category=f"cat{i % 4}") for i, r in enumerate(alpaca_rows)]
    lines = [json.dumps(r) for r in rows]
    lines.append(json.dumps(rows[0]))  # exact duplicate of line 1
    lines.append(json.dumps({"instruction": "no output here"}))
    lines.append('{"instruction": "broken json", ')
    path = tmp_path / "pool.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return rows


def _recipe(write_recipe, fmt="jsonl", k=10, text=RECIPE):
    return write_recipe(text.format(fmt=fmt, k=k))


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _expected_ids(rows):
    return {row_id([r["instruction"], r.get("input", ""), r["output"]]) for r in rows}


# ---------------------------------------------------------------------------------------------
# Accounting
# ---------------------------------------------------------------------------------------------
def test_accounting_invariant(tmp_path, write_recipe, pool):
    res = dqf.run(_recipe(write_recipe))
    out = tmp_path / "out"
    assert res.run_dir == out
    rows = pl.read_parquet(out / "rows.parquet")
    manifest = json.loads((out / "manifest.json").read_text())
    selected = _read_jsonl(out / "selected.jsonl")
    counts = manifest["counts"]

    # every input row appears exactly once
    assert rows["id"].n_unique() == rows.height
    assert set(rows["id"]) == _expected_ids(pool)
    assert rows.height == 50
    # the duplicate is counted, not repeated
    first = pool[0]
    assert rows.filter(pl.col("id") == row_id([first["instruction"], first["input"], first["output"]]))["copies"].to_list() == [2]
    assert rows["copies"].sum() == 51

    # selected ⊆ input, and the selected file holds exactly the selected rows
    sel_ids = set(rows.filter("selected")["id"])
    sel_file_ids = {row_id([r["instruction"], r["input"], r["output"]]) for r in selected}
    assert sel_file_ids == sel_ids
    assert sel_ids <= set(rows["id"])
    assert len(selected) == len(sel_ids) == 10

    # manifest counts agree with the files
    assert counts == {"rows_read": 53, "quarantined": 2, "duplicates": 1, "unique_rows": 50, "selected": 10}
    assert counts["rows_read"] == counts["unique_rows"] + counts["duplicates"] + counts["quarantined"]
    assert counts["unique_rows"] == rows.height
    assert counts["selected"] == rows["selected"].sum() == len(selected)
    quality, top = manifest["steps"]
    n_quality = sum(1 for i in range(50) if words(i) >= 7)
    assert quality["id"] == "quality" and quality["rows_in"] == 50 and quality["rows_out"] == n_quality
    assert quality["dropped"] == 50 - n_quality
    assert top["id"] == "top" and top["rows_in"] == n_quality and top["rows_out"] == 10
    assert top["from"] == "quality"
    assert (rows["step_quality"] == "kept").sum() == quality["rows_out"]
    assert rows["step_quality"].is_not_null().sum() == quality["rows_in"]
    assert (rows["step_top"] == "kept").sum() == top["rows_out"]
    assert rows["step_top"].is_not_null().sum() == top["rows_in"]

    # quarantined rows are in quarantine.jsonl with source and reason
    quarantine = _read_jsonl(out / "quarantine.jsonl")
    assert len(quarantine) == counts["quarantined"]
    assert [(Path(q["source"].rsplit(":", 1)[0]).name, q["source"].rsplit(":", 1)[1]) for q in quarantine] == [
        ("pool.jsonl", "52"), ("pool.jsonl", "53")]
    assert quarantine[0]["reason"] == "field 'output': missing"
    assert quarantine[1]["reason"].startswith("invalid JSON (")
    assert manifest["output"]["quarantine_file"].endswith("quarantine.jsonl")

    # the returned frames are the written ones
    assert res.rows.equals(rows)
    assert res.selected.height == 10
    assert res.manifest["counts"] == counts


def test_every_dropped_row_has_step_and_reason(tmp_path, write_recipe, pool):
    res = dqf.run(_recipe(write_recipe))
    rows = res.rows
    dropped = rows.filter(~pl.col("selected"))
    assert dropped.height == 40
    assert dropped["dropped_by"].null_count() == 0 and dropped["reason"].null_count() == 0
    kept = rows.filter("selected")
    assert kept["dropped_by"].null_count() == kept.height and kept["reason"].null_count() == kept.height

    where_reason = "where: output_words >= 7"
    top_reason = "not in top-k by output_words (descending, k=10)"
    assert set(rows["step_quality"].unique().to_list()) == {"kept", where_reason}
    assert set(rows["step_top"].unique().to_list()) == {"kept", top_reason, None}

    # where drop: recorded on the scorer step, and the row never reached the selector
    short = rows.filter(pl.col("output_words") < 7)
    assert short.height == sum(1 for i in range(50) if words(i) < 7)
    assert set(short["dropped_by"]) == {"quality"} and set(short["reason"]) == {where_reason}
    assert short["step_top"].null_count() == short.height
    # selector drop
    lost = rows.filter((pl.col("output_words") >= 7) & ~pl.col("selected"))
    assert lost.height > 0
    assert set(lost["dropped_by"]) == {"top"} and set(lost["reason"]) == {top_reason}
    assert set(lost["step_quality"]) == {"kept"}
    # top-k really picked the longest outputs
    assert kept["output_words"].min() >= lost["output_words"].max()


def test_where_on_a_selector_step_records_that_step(tmp_path, write_recipe, pool):
    recipe = write_recipe("""
        name = "where-select"
        plugins = ["words.py"]
        [input]
        path = "pool.jsonl"
        on_bad_row = "quarantine"
        [output]
        dir = "out"
        [[steps]]
        id = "h"
        score = { plugin = "words" }
        [[steps]]
        id = "pick"
        select = { plugin = "top-k", column = "output_words", k = 5, descending = false }
        where = "output_words > 8"
    """)
    rows = dqf.run(recipe).rows
    assert set(rows["step_h"]) == {"kept"}
    small = rows.filter(pl.col("output_words") <= 8)
    assert set(small["step_pick"]) == {"where: output_words > 8"}
    assert set(small["dropped_by"]) == {"pick"}
    picked = rows.filter("selected")
    assert picked.height == 5 and set(picked["output_words"]) == {9}
    others = rows.filter((pl.col("output_words") > 8) & ~pl.col("selected"))
    assert set(others["reason"]) == {"not in top-k by output_words (ascending, k=5)"}
    assert set(others["dropped_by"]) == {"pick"}


def test_output_select_union_of_two_branches(tmp_path, write_recipe, pool):
    recipe = write_recipe("""
        name = "union"
        plugins = ["words.py"]
        [input]
        path = "pool.jsonl"
        on_bad_row = "quarantine"
        [output]
        dir = "out"
        select = ["short", "long"]
        [[steps]]
        id = "h"
        score = { plugin = "words" }
        [[steps]]
        id = "short"
        from = "h"
        select = { plugin = "threshold", column = "output_words", max = 5 }
        [[steps]]
        id = "long"
        from = "h"
        select = { plugin = "top-k", column = "output_words", k = 3 }
    """)
    res = dqf.run(recipe)
    rows = res.rows
    short = set(rows.filter(pl.col("step_short") == "kept")["id"])
    long_ = set(rows.filter(pl.col("step_long") == "kept")["id"])
    expect_short = _expected_ids([r for i, r in enumerate(pool) if words(i) <= 5])
    expect_long = _expected_ids([r for i, r in enumerate(pool) if words(i) == 11][:3])
    assert short == expect_short and long_ == expect_long
    assert short and long_ and not (short & long_)
    assert set(rows.filter("selected")["id"]) == short | long_
    assert res.manifest["counts"]["selected"] == len(short | long_)
    assert len(_read_jsonl(tmp_path / "out" / "selected.jsonl")) == len(short | long_)
    assert res.manifest["output"]["select"] == ["short", "long"]
    # both branches saw every row
    assert rows["step_short"].null_count() == 0 and rows["step_long"].null_count() == 0
    not_sel = rows.filter(~pl.col("selected"))
    assert not_sel["reason"].null_count() == 0 and set(not_sel["dropped_by"]) == {"short"}


# ---------------------------------------------------------------------------------------------
# Output formats
# ---------------------------------------------------------------------------------------------
def _load_selected(path: Path, fmt: str) -> list[dict]:
    if fmt == "jsonl":
        return _read_jsonl(path)
    if fmt in ("json", "sharegpt"):
        return json.loads(path.read_text(encoding="utf-8"))
    return pl.read_parquet(path).to_dicts()


@pytest.mark.parametrize("fmt,suffix", [("jsonl", "jsonl"), ("json", "json"), ("parquet", "parquet"),
                                        ("sharegpt", "json")])
def test_output_formats_keep_original_fields(tmp_path, write_recipe, pool, fmt, suffix):
    res = dqf.run(_recipe(write_recipe, fmt=fmt))
    path = tmp_path / "out" / f"selected.{suffix}"
    assert path.is_file()
    assert [p.name for p in (tmp_path / "out").glob("selected.*")] == [path.name]
    assert res.manifest["output"]["selected_file"].endswith(f"selected.{suffix}")
    records = _load_selected(path, fmt)
    assert len(records) == 10
    by_instruction = {r["instruction"]: r for r in pool}
    for rec in records:
        orig = by_instruction[rec["instruction"]]
        assert rec["category"] == orig["category"]  # the extra field survives
        assert rec["input"] == orig["input"] and rec["output"] == orig["output"]
        if fmt == "sharegpt":
            prompt = orig["instruction"] + (f"\n\n{orig['input']}" if orig["input"] else "")
            assert rec["conversations"] == [{"from": "human", "value": prompt}, {"from": "gpt", "value": orig["output"]}]
        else:
            assert set(rec) == {"instruction", "input", "output", "category"}
    if fmt == "sharegpt":
        assert any(r["input"] for r in records)  # the prompt with input was exercised


def test_sharegpt_output_of_chat_input(tmp_path, write_recipe, write_jsonl):
    sg = {"conversations": [{"from": "human", "value": "Hi there"}, {"from": "gpt", "value": "Hello, friend"},
                            {"from": "human", "value": "Bye"}, {"from": "gpt", "value": "See you"}], "src": "a"}
    ms = {"messages": [{"role": "system", "content": "Be kind"}, {"role": "user", "content": "Question"},
                       {"role": "assistant", "content": "Answer text"}], "src": "b"}
    write_jsonl([sg, ms])
    recipe = write_recipe("""
        name = "chat"
        [input]
        path = "pool.jsonl"
        [output]
        dir = "out"
        format = "sharegpt"
        [[steps]]
        id = "all"
        select = { plugin = "threshold", column = "n_turns", min = 1 }
    """)
    dqf.run(recipe)
    out = json.loads((tmp_path / "out" / "selected.json").read_text())
    assert out[0] == sg  # ShareGPT rows pass through whole
    assert out[1] == {"src": "b", "conversations": [{"from": "system", "value": "Be kind"},
                                                    {"from": "human", "value": "Question"},
                                                    {"from": "gpt", "value": "Answer text"}]}


# ---------------------------------------------------------------------------------------------
# Options, errors and robustness
# ---------------------------------------------------------------------------------------------
def test_limit(tmp_path, write_recipe, pool):
    res = dqf.run(_recipe(write_recipe, k=3), limit=20)
    assert res.manifest["counts"]["rows_read"] == 20
    assert res.manifest["input"]["limit"] == 20
    assert set(res.rows["id"]) == _expected_ids(pool[:20])
    assert res.manifest["steps"][0]["rows_in"] == 20
    assert res.manifest["counts"]["selected"] == 3
    assert not (tmp_path / "out" / "quarantine.jsonl").exists()  # the bad rows lie past the limit
    assert res.manifest["output"]["quarantine_file"] is None


def test_unwritable_output_dir_is_one_line_error(tmp_path, write_recipe, pool):
    blocker = tmp_path / "afile"
    blocker.write_text("I am a file, not a folder")
    with pytest.raises(DqfError) as err:
        dqf.run(_recipe(write_recipe), run_dir=blocker / "out")
    msg = str(err.value)
    assert "\n" not in msg and len(err.value.lines) == 1
    assert msg.startswith("output.dir: cannot write to ") and "afile/out" in msg
    assert blocker.read_text() == "I am a file, not a folder"


def test_unwritable_output_dir_from_recipe(tmp_path, write_recipe, pool):
    (tmp_path / "afile").write_text("x")
    recipe = write_recipe(RECIPE.format(fmt="jsonl", k=3).replace('dir = "out"', 'dir = "afile/sub/out"'))
    with pytest.raises(DqfError) as err:
        dqf.run(recipe)
    assert str(err.value).startswith("output.dir: cannot write to ")
    assert "\n" not in str(err.value)


def test_no_temporary_files_left(tmp_path, write_recipe, pool, isolated_cache):
    for fmt in ("jsonl", "parquet", "sharegpt"):
        dqf.run(_recipe(write_recipe, fmt=fmt))
    leftovers = [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".dqf-write-test-")]
    assert leftovers == []
    # the last run's selection only: an earlier format's selected.* would misstate this run
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "axolotl.yaml", "dataset_info.json", "manifest.json", "quarantine.jsonl", "rows.parquet", "selected.json"]
    assert list(isolated_cache.rglob("*.parquet"))  # the cache was written, and with no temporaries


def test_run_twice_identical(tmp_path, write_recipe, pool):
    recipe = _recipe(write_recipe)
    dqf.run(recipe, run_dir=tmp_path / "a", use_cache=False)
    dqf.run(recipe, run_dir=tmp_path / "b")  # cache filled on the way
    dqf.run(recipe, run_dir=tmp_path / "c")  # scores from cache
    a, b, c = (pl.read_parquet(tmp_path / d / "rows.parquet") for d in "abc")
    assert a.equals(b) and a.equals(c)
    for name in ("rows.parquet", "selected.jsonl", "quarantine.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes() == \
            (tmp_path / "c" / name).read_bytes()
    ma, mc = (json.loads((tmp_path / d / "manifest.json").read_text()) for d in "ac")
    assert ma["counts"] == mc["counts"]


def test_stale_quarantine_file_removed(tmp_path, write_recipe, pool, alpaca_rows):
    recipe = _recipe(write_recipe, k=3)
    dqf.run(recipe)
    assert (tmp_path / "out" / "quarantine.jsonl").exists()
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in alpaca_rows))
    res = dqf.run(recipe)
    assert res.manifest["counts"]["quarantined"] == 0
    assert not (tmp_path / "out" / "quarantine.jsonl").exists()


def test_bad_row_in_error_mode_stops_the_run(tmp_path, write_recipe, pool):
    recipe = write_recipe(RECIPE.format(fmt="jsonl", k=3).replace('on_bad_row = "quarantine"', 'on_bad_row = "error"'))
    with pytest.raises(dqf.DataError) as err:
        dqf.run(recipe)
    assert str(err.value).endswith("pool.jsonl:52: field 'output': missing")
    assert not (tmp_path / "out" / "rows.parquet").exists()


def test_step_with_no_rows_left(tmp_path, write_recipe, alpaca_rows, write_jsonl):
    """A step whose input is empty still produces its (null) columns and accounts for every row."""
    write_jsonl(alpaca_rows)
    recipe = write_recipe("""
        name = "nothing-left"
        plugins = ["words.py"]
        [input]
        path = "pool.jsonl"
        [output]
        dir = "out"
        [[steps]]
        id = "none"
        select = { plugin = "threshold", column = "n_turns", min = 5 }
        [[steps]]
        id = "h"
        score = { plugin = "words" }
        where = "output_words > 0"
        [[steps]]
        id = "top"
        select = { plugin = "top-k", column = "output_words", k = 2 }
    """)
    res = dqf.run(recipe)
    rows = res.rows
    assert rows.height == 50 and rows["selected"].sum() == 0
    assert rows["output_words"].null_count() == 50
    assert set(rows["dropped_by"]) == {"none"}
    assert rows["step_h"].null_count() == 50 and rows["step_top"].null_count() == 50
    assert [s["rows_in"] for s in res.manifest["steps"]] == [50, 0, 0]
    assert (tmp_path / "out" / "selected.jsonl").read_text() == ""


def test_manifest_records_plugins_and_input(tmp_path, write_recipe, pool):
    res = dqf.run(_recipe(write_recipe))
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["name"] == "accounting" and m["seed"] == 3 and m["dqf_version"] == dqf.__version__
    assert [(p["step"], p["plugin"], p["kind"], p["distribution"]) for p in m["plugins"]] == [
        ("quality", "words", "scorer", f"local file {tmp_path / 'words.py'}"), ("top", "top-k", "selector", "dqf")]
    assert m["plugins"][1]["options"]["k"] == 10
    assert len(m["input"]["files"]) == 1 and m["input"]["files"][0]["rows"] == 53
    assert m == json.loads(json.dumps(res.manifest, default=str))


def test_quickstart_selects_200(tmp_path):
    res = dqf.run(QUICKSTART, run_dir=tmp_path / "qs")
    out = tmp_path / "qs"
    assert res.manifest["counts"]["selected"] == 200
    assert len((out / "selected.jsonl").read_text(encoding="utf-8").splitlines()) == 200
    rows = pl.read_parquet(out / "rows.parquet")
    assert rows.height == res.manifest["counts"]["unique_rows"] == 2000
    ok = rows.filter(pl.col("heuristic_ok") & (pl.col("output_words") >= 3))
    sel = rows.filter("selected")
    assert sel.height == 200
    assert sel["output_words"].min() >= ok.filter(~pl.col("selected"))["output_words"].max()


def test_a_null_where_predicate_is_reported_apart_from_a_false_one(write_jsonl, write_recipe):
    rows = [{"instruction": "Say hi.", "output": "hi there friend"},
            {"instruction": "Say nothing.", "output": ""},          # no words: output_ttr is null
            {"instruction": "Repeat.", "output": "a a a a a a a a"}]  # ttr 0.125
    write_jsonl(rows)
    recipe = write_recipe("""
        name = "nulls"
        plugins = ["words.py"]
        [input]
        path = "pool.jsonl"
        [output]
        dir = "out"
        [[steps]]
        id = "h"
        score = { plugin = "words" }
        where = "output_ttr > 0.5"
    """)
    result = dqf.run(recipe)
    by_out = dict(zip(result.selected["output"], result.selected["id"]))
    assert list(by_out) == ["hi there friend"]
    reasons = dict(zip(result.rows["id"], result.rows["reason"]))
    ids = {r["output"]: dqf_row_id(r) for r in rows}
    assert reasons[ids[""]] == "where: output_ttr > 0.5 (null)"
    assert reasons[ids["a a a a a a a a"]] == "where: output_ttr > 0.5"
    assert reasons[ids["hi there friend"]] is None


def dqf_row_id(row):
    from dqf.io.rows import canonicalize

    return canonicalize(row).id
