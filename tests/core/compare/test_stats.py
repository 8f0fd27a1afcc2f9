"""Rank statistics and summaries of `dqf compare` against answers known by construction and against scipy/sklearn."""

from __future__ import annotations

import numpy as np
import pytest

from dqf.compare import stats


def test_auc_of_a_perfectly_separating_score_is_one_and_reversed_zero():
    labels = np.array([0, 0, 0, 1, 1])
    score = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    assert stats.roc_auc(score, labels) == 1.0
    assert stats.roc_auc(-score, labels) == 0.0
    assert stats.roc_auc(np.ones(5), labels) == 0.5  # every pair tied: half credit


def test_auc_needs_both_classes():
    assert stats.roc_auc([1, 2, 3], [1, 1, 1]) is None
    assert stats.roc_auc([1, 2, 3], [0, 0, 0]) is None


def test_auc_and_spearman_match_their_definitions_with_ties():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 8, size=400).astype(float)  # many ties
    y = (x + rng.normal(0, 3, size=400) > 4).astype(int)
    pos, neg = x[y == 1], x[y == 0]
    brute = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (pos.size * neg.size)
    assert stats.roc_auc(x, y) == pytest.approx(brute, abs=1e-12)
    assert stats.rankdata([10, 20, 20, 30, 20]).tolist() == [1.0, 3.0, 3.0, 5.0, 3.0]
    a, b = rng.permutation(50).astype(float), rng.permutation(50).astype(float)  # no ties: the textbook formula
    d = stats.rankdata(a) - stats.rankdata(b)
    assert stats.spearman(a, b) == pytest.approx(1 - 6 * (d @ d) / (50 * (50 ** 2 - 1)), abs=1e-12)


def test_spearman_of_a_monotone_score_is_one():
    x = np.array([1.0, 2.0, 5.0, 9.0, 30.0])
    assert stats.spearman(x, x ** 3) == pytest.approx(1.0)
    assert stats.spearman(x, -np.log(x)) == pytest.approx(-1.0)
    assert stats.spearman(x, np.ones(5)) is None


def test_summary_and_shared_histograms():
    v = np.arange(101, dtype=float)
    s = stats.summarize(np.r_[v, np.nan])
    assert s["n"] == 101 and s["mean"] == 50.0
    assert s["quantiles"] == {"p5": 5.0, "p25": 25.0, "p50": 50.0, "p75": 75.0, "p95": 95.0}
    assert stats.summarize([])["n"] == 0
    edges = stats.bin_edges(v)
    assert len(edges) == stats.BINS + 1 and edges[0] == 1.0 and edges[-1] == 99.0
    h = stats.histogram(v, edges)
    assert sum(h) == 101 and h[0] >= 2 and h[-1] >= 2  # values beyond the 1st/99th percentile land in the ends
    # few integer values: one bin per value
    flags = np.array([0, 1, 1, 0, 1], dtype=float)
    e = stats.bin_edges(flags)
    assert e == [-0.5, 0.5, 1.5]
    assert stats.histogram(flags, e) == [2, 3]
