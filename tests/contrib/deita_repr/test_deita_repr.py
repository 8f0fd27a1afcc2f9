"""`deita-repr` selector: equals a naive O(n*k) DEITA walk, exact and with HNSW, and end to end through dqf.run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import dqf
import dqf.registry
from dqf.store import Store
from dqf.select import default_embedder, greedy_diverse

POOL = Path(__file__).resolve().parents[3] / "examples" / "data" / "alpaca_2k.jsonl"


def naive_deita(X, scores, tau, k):
    """Rows by descending score (ties: input order); take one if cosine to every taken row <= tau; stop at k."""
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    taken = []
    for i in sorted(range(len(scores)), key=lambda i: (-scores[i], i)):
        if len(taken) == k:
            break
        if all(float(U[i] @ U[j]) <= tau for j in taken):
            taken.append(i)
    return taken


@pytest.mark.parametrize("exact_below", [20_000, 10])
def test_helper_equals_naive(exact_below):
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(60, 16))
    X = (centres[rng.integers(60, size=2000)] + 0.4 * rng.normal(size=(2000, 16))).astype(np.float32)
    scores = rng.integers(0, 50, size=2000).astype(float)  # many ties
    order = np.lexsort((np.arange(2000), -scores))
    for tau, k in [(0.9, 150), (0.8, 2000), (0.95, 10)]:
        expected = naive_deita(X.astype(np.float64), scores, tau, k)
        got = greedy_diverse(X, order, tau, inclusive=True, limit=k, exact_below=exact_below)
        assert got == expected


def recipe(select, out="out"):
    return (f'name = "deita"\n[input]\npath = "pool.jsonl"\n[output]\ndir = "{out}"\n'
            '[[steps]]\nid = "h"\nscore = { plugin = "heuristic" }\n'
            f'[[steps]]\nid = "d"\nselect = {{ plugin = "deita-repr", score_column = "output_words", {select} }}\n')


def test_end_to_end_equals_naive(write_jsonl, write_recipe, isolated_cache):
    rows = [json.loads(line) for line in POOL.read_text(encoding="utf-8").splitlines()[:60]]
    rows += [dict(r, instruction=r["instruction"] + " Thanks!", output=r["output"] + " Indeed.") for r in rows[:10]]
    write_jsonl(rows)
    info = dqf.registry.build_plugin_manager().get("embedder", "hf-encoder")
    emb = info.cls(info.cls.Options(**default_embedder().plugin_options()))
    texts = [r["instruction"] for r in rows]
    X = Store(isolated_cache).embeddings.embed(emb, texts).astype(np.float64)
    res = dqf.run(write_recipe(recipe("k = 25, tau = 0.6")))
    words = [float(w) for w in res.rows["output_words"].to_list()]  # input order
    expected = naive_deita(X, words, 0.6, 25)
    assert len(expected) == 25
    assert sorted(res.selected["instruction"].to_list()) == sorted(texts[i] for i in expected)
    dropped = res.rows.filter(res.rows["step_d"] != "kept")["step_d"].unique().to_list()
    assert dropped == ["not picked by deita-repr (k=25, tau=0.6, by output_words)"]


def _errors(write_recipe, text):
    with pytest.raises(dqf.RecipeError) as err:
        dqf.validate(write_recipe(text))
    return str(err.value)


def test_validation_errors(write_jsonl, write_recipe):
    write_jsonl([{"instruction": "a", "input": "", "output": "b"}])
    assert "give exactly one of `k` or `fraction`" in _errors(write_recipe, recipe("k = 2, fraction = 0.5"))
    assert "steps[1].select.tau" in _errors(write_recipe, recipe("k = 2, tau = 3"))
    assert "steps[1].select" in _errors(write_recipe, recipe("k = 2").replace('score_column = "output_words", ', ""))
    assert "steps[1].select.embedder.plugin" in _errors(write_recipe, recipe('k = 2, embedder = { plugin = "x" }'))


def test_tau_quantile_is_the_quantile_of_pair_cosines(write_jsonl, write_recipe, isolated_cache):
    """tau_quantile: the threshold is read off the pool's own pair cosines, so it binds with any embedder."""
    from dqf_contrib.deita_repr.deita_repr import pair_cosine_quantile

    rows = [json.loads(line) for line in POOL.read_text(encoding="utf-8").splitlines()[:60]]
    write_jsonl(rows)
    info = dqf.registry.build_plugin_manager().get("embedder", "hf-encoder")
    emb = info.cls(info.cls.Options(**default_embedder().plugin_options()))
    X = Store(isolated_cache).embeddings.embed(emb, [r["instruction"] for r in rows]).astype(np.float64)
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    tau = float(np.quantile((U @ U.T)[np.triu_indices(len(X), 1)], 0.5))
    assert pair_cosine_quantile(X, 0.5, seed=0) == pytest.approx(tau)
    res = dqf.run(write_recipe(recipe("k = 25, tau_quantile = 0.5")))
    words = [float(w) for w in res.rows["output_words"].to_list()]
    expected = naive_deita(X, words, tau, 25)
    assert sorted(res.selected["instruction"].to_list()) == sorted(rows[i]["instruction"] for i in expected)
    assert res.manifest["steps"][1]["stats"]["tau"] == pytest.approx(tau, abs=1e-6)
    assert "set tau or tau_quantile, not both" in _errors(write_recipe, recipe("k = 2, tau = 0.9, tau_quantile = 0.5"))
