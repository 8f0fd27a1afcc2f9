"""`dedup` selector: exact duplicates after normalisation, near duplicates by cosine, the best-scored row kept."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import dqf
import dqf.registry
from dqf.store import Store
from dqf.select import default_embedder, greedy_diverse
from dqf_contrib.dedup.dedup import normalise


def row(instruction, output):
    return {"instruction": instruction, "input": "", "output": output}


def recipe(dedup, out="out"):
    return (f'name = "dd"\n[input]\npath = "pool.jsonl"\n[output]\ndir = "{out}"\n'
            '[[steps]]\nid = "h"\nscore = { plugin = "heuristic" }\n'
            f'[[steps]]\nid = "dd"\nselect = {{ plugin = "dedup", {dedup} }}\n')


def kept(res):
    """The rows the last step (dedup) kept, with their text."""
    return res.selected


def test_normalise():
    assert normalise(["  Hello,\tWORLD!! ", "hello world", "it's_ok", None]) == ["hello world", "hello world",
                                                                             "itsok", ""]


def test_exact_duplicates_keep_best_scored(write_jsonl, write_recipe):
    rows = [row("Hello, world!", "one"), row("hello   WORLD", "one two three"), row("HELLO world.", "one two"),
            row("Something else", "x"), row("something ELSE!", "x y")]
    write_jsonl(rows)
    res = dqf.run(write_recipe(recipe('score_column = "output_words", threshold = 1.0')))
    assert sorted(kept(res)["output"]) == ["one two three", "x y"]
    dropped = res.rows.filter(pl.col("step_dd") != "kept")["step_dd"].to_list()
    assert dropped and all("exact duplicate" in d and "output_words" in d for d in dropped)

    res = dqf.run(write_recipe(recipe("threshold = 1.0", out="o3"), "r3.toml"))  # no score: first in input order
    assert sorted(kept(res)["output"]) == ["one", "x"]
    res = dqf.run(write_recipe(recipe('score_column = "output_words", descending = false, threshold = 1.0',
                                      out="o4"), "r4.toml"))
    assert sorted(kept(res)["output"]) == ["one", "x"]


def naive_near(X, order, threshold):
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    taken = []
    for i in order:
        if all(float(U[i] @ U[j]) < threshold for j in taken):
            taken.append(int(i))
    return taken


def test_greedy_helper_matches_naive_exact_and_hnsw():
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(40, 16))
    X = (centres[rng.integers(40, size=1500)] + 0.35 * rng.normal(size=(1500, 16))).astype(np.float32)
    order = rng.permutation(1500)
    expected = naive_near(X.astype(np.float64), order, 0.9)
    assert 40 <= len(expected) < 1500
    assert greedy_diverse(X, order, 0.9, inclusive=False) == expected
    assert greedy_diverse(X, order, 0.9, inclusive=False, exact_below=10) == expected


POOL = Path(__file__).resolve().parents[3] / "examples" / "data" / "alpaca_2k.jsonl"


def test_near_duplicates_match_naive(write_jsonl, write_recipe, isolated_cache):
    rows = [json.loads(line) for line in POOL.read_text(encoding="utf-8").splitlines()[:40]]
    rows += [dict(r, instruction=r["instruction"].rstrip(".?!") + " please", output=r["output"] + " More words here.")
             for r in rows[:8]]
    write_jsonl(rows)
    info = dqf.registry.build_plugin_manager().get("embedder", "hf-encoder")
    emb = info.cls(info.cls.Options(**default_embedder().plugin_options()))
    texts = [r["instruction"] for r in rows]
    X = Store(isolated_cache).embeddings.embed(emb, texts).astype(np.float64)
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    sims = np.sort((U @ U.T)[np.triu_indices(len(rows), 1)])
    # the threshold sits in the widest gap among the top similarities, so float32 rounding cannot move a pair
    top = len(sims) - 60
    gap = max(range(top, len(sims) - 1), key=lambda i: sims[i + 1] - sims[i])
    threshold = float((sims[gap] + sims[gap + 1]) / 2)
    words = np.array([len(r["output"].split()) for r in rows])
    order = np.lexsort((np.arange(len(rows)), -words))
    keys = normalise(texts)
    seen, survivors = set(), []
    for i in order:
        if keys[i] not in seen:
            seen.add(keys[i])
            survivors.append(int(i))
    near = naive_near(X[survivors], np.arange(len(survivors)), threshold)
    expected = {rows[survivors[j]]["instruction"] for j in near}
    assert len(expected) < len(survivors)

    res = dqf.run(write_recipe(recipe(f'score_column = "output_words", threshold = {threshold!r}')))
    assert set(kept(res)["instruction"]) == expected
    reasons = set(res.rows.filter(pl.col("step_dd") != "kept")["step_dd"])
    assert reasons and all("near duplicate (cosine >= " in r for r in reasons)


def test_near_duplicates_with_minilm(write_jsonl, write_recipe):
    rows = [row("What is the capital of France?", "Paris."),
            row("What's the capital city of France?", "The capital of France is Paris."),
            row("Write a haiku about autumn leaves.", "Leaves fall..."),
            row("How do I sort a list in Python?", "Use sorted()."),
            row("How can I sort a Python list?", "Call list.sort() or sorted(list).")]
    write_jsonl(rows)
    res = dqf.run(write_recipe(recipe('score_column = "output_words", threshold = 0.8')))
    assert sorted(kept(res)["output"]) == sorted(["The capital of France is Paris.", "Leaves fall...",
                                                  "Call list.sort() or sorted(list)."])


def _errors(write_recipe, text):
    with pytest.raises(dqf.RecipeError) as err:
        dqf.validate(write_recipe(text))
    return str(err.value)


def test_validation_errors(write_jsonl, write_recipe):
    write_jsonl([row("a", "b")])
    assert "steps[1].select.threshold" in _errors(write_recipe, recipe("threshold = 2.0"))
    assert "steps[1].select.embedder.poolng: unknown key" in _errors(
        write_recipe, recipe('embedder = { plugin = "hf-encoder", poolng = "mean" }'))
    msg = _errors(write_recipe, recipe('score_column = "no_such_column"'))
    assert "no_such_column" in msg
