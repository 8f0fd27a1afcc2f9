"""Overlap, baselines, score columns, label files and agreement of `dqf compare` on small synthetic pools."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from dqf.compare import measures
from dqf.compare.baselines import LONGEST, RANDOM, baselines
from dqf.compare.labels import read_labels
from dqf.compare.pool import Pool, score_columns
from dqf.compare.strategies import Strategy
from dqf.errors import DataError
from dqf.io.rows import canonicalize


def make_pool(n=10):
    recs = [{"instruction": f"task {i}", "input": "", "output": " ".join(["w"] * (i + 1))} for i in range(n)]
    ids = [canonicalize(r).id for r in recs]
    frame = pl.DataFrame({"id": ids, "instruction": [r["instruction"] for r in recs], "input": [""] * n,
                          "output": [r["output"] for r in recs], "_raw": [json.dumps(r) for r in recs]})
    return Pool(frame, "pool.jsonl"), recs


def strat(name, idx, n=10):
    m = np.zeros(n, dtype=bool)
    m[list(idx)] = True
    return Strategy(name=name, kind="run", mask=m)


def test_disjoint_selections_have_jaccard_zero_identical_ones_one():
    ov = measures.overlap([strat("a", [0, 1, 2]), strat("b", [3, 4]), strat("c", [0, 1, 2]), strat("e", [])])
    assert ov["names"] == ["a", "b", "c", "e"]
    assert ov["jaccard"][0][1] == 0.0 and ov["jaccard"][0][2] == 1.0 and ov["jaccard"][1][1] == 1.0
    assert ov["counts"][0][0] == 3 and ov["counts"][0][2] == 3 and ov["counts"][0][1] == 0
    assert ov["jaccard"][3][3] is None  # two empty selections: undefined, not 1


def test_baselines_have_the_first_strategy_size_and_are_seeded():
    pool, _ = make_pool()
    a = baselines(pool, 4, seed=0, size_from="x")
    b = baselines(pool, 4, seed=0, size_from="x")
    assert [s.name for s in a] == [RANDOM, LONGEST]
    assert all(s.mask.sum() == 4 for s in a)
    assert np.array_equal(a[0].mask, b[0].mask)
    assert np.flatnonzero(a[1].mask).tolist() == [6, 7, 8, 9]  # the longest outputs
    assert not np.array_equal(a[0].mask, baselines(pool, 4, seed=1, size_from="x")[0].mask)


def test_score_columns_merge_identical_and_split_differing():
    pool, _ = make_pool(4)
    ids = pool.ids.to_list()
    r1 = pl.DataFrame({"id": ids[::-1], "source": ["f"] * 4, "copies": [1] * 4, "q": [4.0, 3.0, 2.0, 1.0],
                       "ok": [True, False, True, True], "step_a": ["kept"] * 4, "selected": [True] * 4})
    r2 = r1.with_columns(pl.col("ok").not_())
    cols = score_columns([Strategy("r1", "run", rows=r1), Strategy("r2", "run", rows=r2)], pool)
    assert set(cols) == {"q", "ok@r1", "ok@r2"}
    assert cols["q"]["values"].tolist() == [1.0, 2.0, 3.0, 4.0]  # aligned to pool order, not rows order
    assert cols["q"]["runs"] == ["r1", "r2"] and cols["ok@r1"]["boolean"]


def test_distributions_share_edges():
    vals = {"x": np.arange(10, dtype=float)}
    d = measures.distributions(vals, [strat("a", [0, 1]), strat("b", [8, 9])])["x"]
    assert sum(d["pool"]["hist"]) == 10 and sum(d["strategies"]["a"]["hist"]) == 2
    assert d["strategies"]["a"]["quantiles"]["p50"] == 0.5 and d["strategies"]["b"]["quantiles"]["p50"] == 8.5


def test_membership_label_file_and_agreement(tmp_path):
    pool, recs = make_pool()
    # a published selection given as rows only: membership, matched by content
    (tmp_path / "chosen.json").write_text(json.dumps(recs[5:]), encoding="utf-8")
    [ls] = read_labels(tmp_path / "chosen.json", pool)
    assert ls.name == "chosen" and ls.kind == "binary" and ls.column is None and ls.matched == 5
    assert ls.values.tolist() == [0.0] * 5 + [1.0] * 5
    length = np.arange(10, dtype=float)
    ag = measures.agreement({"len": length, "neg": -length}, [ls], [strat("top", [7, 8, 9]), strat("low", [0, 1])])
    a = ag["chosen"]
    assert a["metric"] == "auc" and a["columns"]["len"]["auc"] == 1.0 and a["columns"]["neg"]["auc"] == 0.0
    assert a["pool"]["mean"] == 0.5 and a["strategies"]["top"]["mean"] == 1.0 and a["strategies"]["top"]["lift"] == 2.0
    assert a["strategies"]["low"]["mean"] == 0.0


def test_label_columns_by_id_graded_and_binary(tmp_path):
    pool, recs = make_pool()
    ids = pool.ids.to_list()
    rows = [{"id": ids[i], "rating": float(i % 5), "good": i >= 5, "note": "x"} for i in range(0, 10, 2)]
    rows.append({"id": "not-in-pool", "rating": 1.0, "good": True})
    path = tmp_path / "lab.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    sets = {ls.name: ls for ls in read_labels(path, pool)}
    assert set(sets) == {"lab.rating", "lab.good"}  # the string column is not a label
    assert sets["lab.rating"].kind == "graded" and sets["lab.good"].kind == "binary"
    assert sets["lab.good"].matched == 5 and sets["lab.good"].file_rows == 6
    assert np.isnan(sets["lab.rating"].values[1])  # rows the file does not list are unlabelled
    x = np.arange(10, dtype=float)
    ag = measures.agreement({"x": x}, list(sets.values()), [])
    assert ag["lab.good"]["columns"]["x"]["auc"] == 1.0 and ag["lab.good"]["columns"]["x"]["n"] == 5
    # rating over rows 0,2,4,6,8 is 0,2,4,1,3: rank differences 0,1,2,-2,-1, rho = 1 - 6*10/(5*24)
    assert ag["lab.rating"]["metric"] == "spearman"
    assert ag["lab.rating"]["columns"]["x"]["spearman"] == pytest.approx(0.5)


def test_a_label_file_matching_no_pool_row_is_an_error(tmp_path):
    pool, _ = make_pool()
    path = tmp_path / "other.jsonl"
    path.write_text(json.dumps({"instruction": "elsewhere", "output": "x", "y": 1}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="none of its 1 rows is in the pool"):
        read_labels(path, pool)


def test_mix_counts_top_values():
    pool, _ = make_pool(4)
    m = measures.mix({"category": pl.Series(["qa", "qa", "code", None])}, [strat("a", [0, 2], n=4)])
    assert m["category"]["values"] == ["qa", "(none)", "code"]  # most frequent first
    assert m["category"]["pool"] == {"qa": 2, "code": 1, "(none)": 1}
    assert m["category"]["strategies"]["a"] == {"qa": 1, "code": 1, "(none)": 0}
