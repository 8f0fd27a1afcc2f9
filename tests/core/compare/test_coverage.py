"""Coverage numbers of `dqf compare` on point sets whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

import dqf
import dqf.select
from dqf.compare.coverage import coverage, mean_pairwise, nearest_selected


def test_a_selection_equal_to_the_pool_has_radius_and_mean_distance_zero():
    X = np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32) + 50  # a shared offset, as embeddings have
    c = coverage(X, np.arange(300))
    assert c["radius"] == 0.0 and c["mean_nearest"] == 0.0 and c["median_nearest"] == 0.0


def test_known_distances_on_a_line():
    X = np.array([[0.0], [1.0], [3.0], [7.0]], dtype=np.float32)
    dist, method = nearest_selected(X, [0, 2])
    assert method == "exact"
    assert dist.tolist() == [0.0, 1.0, 0.0, 4.0]
    c = coverage(X, [0, 2])
    assert c["radius"] == 4.0 and c["mean_nearest"] == 1.25
    assert c["mean_pairwise"] == 3.0 and c["pairs"] == 1 and not c["pairs_sampled"]
    # all pairs of {0, 1, 3}: 1, 3, 2
    assert mean_pairwise(X, [0, 1, 2])["mean_pairwise"] == pytest.approx(2.0)
    assert mean_pairwise(X, [3])["mean_pairwise"] is None


def test_radius_agrees_with_kcenter_radius():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(500, 16)).astype(np.float32)
    sel = rng.choice(500, size=20, replace=False)
    assert coverage(X, sel)["radius"] == pytest.approx(dqf.select.kcenter_radius(X, sel), rel=1e-9)


def test_hnsw_and_exact_search_agree():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(3000, 24)).astype(np.float32)
    sel = rng.choice(3000, size=400, replace=False)
    exact, m1 = nearest_selected(X, sel)
    approx, m2 = nearest_selected(X, sel, exact_below=0)
    assert (m1, m2) == ("exact", "hnsw")
    assert np.all(approx >= exact - 1e-9)  # an approximate neighbour is never nearer than the nearest
    assert np.mean(np.isclose(approx, exact, rtol=1e-9)) > 0.99
    assert approx.max() == pytest.approx(exact.max(), rel=1e-6)
    assert approx.mean() == pytest.approx(exact.mean(), rel=1e-3)


def test_large_selections_sample_pairs_and_say_so():
    X = np.random.default_rng(3).normal(size=(600, 4))
    exact = mean_pairwise(X, np.arange(600))
    sampled = mean_pairwise(X, np.arange(600), exact_max=100, sample=50_000)
    assert not exact["pairs_sampled"] and exact["pairs"] == 600 * 599 // 2
    assert sampled["pairs_sampled"] and sampled["pairs"] == 50_000
    assert sampled["mean_pairwise"] == pytest.approx(exact["mean_pairwise"], rel=0.02)
