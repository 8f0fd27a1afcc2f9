"""`knn-distance` probe: exact search equals brute force, HNSW agrees with it, end to end through dqf.run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import dqf
import dqf.registry
from dqf.store import Store
from dqf.select import knn_search

POOL = Path(__file__).resolve().parents[3] / "examples" / "data" / "alpaca_2k.jsonl"


def brute(X, k, metric):
    X = np.asarray(X, dtype=np.float64)
    if metric == "cosine":
        U = X / np.linalg.norm(X, axis=1, keepdims=True)
        D = 1.0 - U @ U.T
    else:
        D = np.sqrt(((X[:, None, :] - X[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(D, np.inf)
    return np.sort(D, axis=1)[:, :k]


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_exact_equals_brute_force(metric):
    X = np.random.default_rng(1).normal(size=(300, 24)).astype(np.float32)
    idx, dist = knn_search(X, 7, metric=metric)
    assert idx.shape == dist.shape == (300, 7)
    assert not (idx == np.arange(300)[:, None]).any()
    np.testing.assert_allclose(dist, brute(X, 7, metric), atol=1e-4)
    # the indices point at rows at exactly those distances
    again = np.take_along_axis(brute_full(X, metric), idx, axis=1)
    np.testing.assert_allclose(again, dist, atol=1e-4)


def brute_full(X, metric):
    X = np.asarray(X, dtype=np.float64)
    if metric == "cosine":
        U = X / np.linalg.norm(X, axis=1, keepdims=True)
        return 1.0 - U @ U.T
    return np.sqrt(((X[:, None, :] - X[None, :, :]) ** 2).sum(-1))


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_hnsw_agrees_with_exact(metric):
    X = np.random.default_rng(2).normal(size=(2000, 16)).astype(np.float32)
    ei, ed = knn_search(X, 10, metric=metric)  # exact: 2000 < 20000
    hi, hd = knn_search(X, 10, metric=metric, exact_below=100)
    assert hi.shape == (2000, 10) and not (hi == np.arange(2000)[:, None]).any()
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ei, hi)])
    assert recall > 0.97
    np.testing.assert_allclose(hd.mean(1), ed.mean(1), atol=0.02)
    assert abs(hd.mean() - ed.mean()) < 1e-3
    np.testing.assert_allclose(ed.mean(1), brute(X, 10, metric).mean(1), atol=1e-4)


def test_duplicates_and_tiny_inputs():
    X = np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32)
    idx, dist = knn_search(X, 5)
    assert dist.shape == (3, 2)  # at most n - 1 neighbours
    assert idx[0, 0] == 1 and dist[0, 0] == pytest.approx(0.0)
    idx, dist = knn_search(X[:1], 3)
    assert dist.shape == (1, 0)


@pytest.fixture
def pool(write_jsonl):
    rows = [json.loads(line) for line in POOL.read_text(encoding="utf-8").splitlines()[:40]]
    write_jsonl(rows)
    return rows


def recipe(model, probe, where=None):
    w = f'where = "{where}"\n' if where else ""
    return (f'name = "knn"\n[input]\npath = "pool.jsonl"\n[output]\ndir = "out"\n'
            f'[[steps]]\nid = "tail"\nprobe = {{ plugin = "knn-distance", '
            f'embedder = {{ plugin = "hf-encoder", model = "{model}" }}{probe} }}\n{w}')


def cached_vectors(model, texts, cache):
    info = dqf.registry.build_plugin_manager().get("embedder", "hf-encoder")
    return Store(cache).embeddings.embed(info.cls(info.cls.Options(model=str(model))), texts)


def test_end_to_end(write_recipe, pool, tiny_models, isolated_cache):
    res = dqf.run(write_recipe(recipe(tiny_models["bert"], ", k = 3", where="knn_distance >= 0")))
    by_id = dict(zip(res.rows["id"].to_list(), res.rows["knn_distance"].to_list()))
    assert len(by_id) == 40
    ids = res.rows["id"].to_list()
    X = cached_vectors(tiny_models["bert"], [r["instruction"] for r in pool], isolated_cache)
    expected = brute(X, 3, "cosine").mean(1)
    # rows come back in input order
    got = np.array([by_id[i] for i in ids])
    np.testing.assert_allclose(got, expected, atol=1e-4)


def _errors(write_recipe, text):
    with pytest.raises(dqf.RecipeError) as err:
        dqf.validate(write_recipe(text))
    return str(err.value)


def test_validation_errors(write_recipe, pool, tiny_models):
    m = tiny_models["bert"]
    assert "steps[0].probe.metric" in _errors(write_recipe, recipe(m, ', metric = "dot"'))
    assert "steps[0].probe.k" in _errors(write_recipe, recipe(m, ", k = 0"))
    assert "steps[0].probe.nope: unknown key" in _errors(write_recipe, recipe(m, ", nope = 1"))
