"""How well a selection covers the pool in embedding space: nearest-selected distances (exact or HNSW) and spread."""

from __future__ import annotations

from typing import Any

import numpy as np

from dqf.select import EXACT_MAX_PAIRS, nearest_selected

#: Selections up to this size get every pair for the mean pairwise distance; larger ones a sample.
PAIRWISE_EXACT_MAX = 2_000
#: Pairs drawn when the selection is larger than :data:`PAIRWISE_EXACT_MAX`.
PAIRWISE_SAMPLE = 200_000
# Keeps each block of the pairwise distances near 64 MiB.
_BLOCK_BYTES = 64 << 20


def mean_pairwise(X, selected, *, exact_max: int = PAIRWISE_EXACT_MAX, sample: int = PAIRWISE_SAMPLE,
                  seed: int = 0) -> dict[str, Any]:
    """Mean Euclidean distance between two different selected rows: over every pair when the
    selection has at most ``exact_max`` rows, else over ``sample`` uniformly drawn pairs."""
    X = np.asarray(X, dtype=np.float64)
    sel = np.unique(np.asarray(selected, dtype=np.int64))
    m = sel.size
    if m < 2:
        return {"mean_pairwise": None, "pairs": 0, "pairs_sampled": False}
    S = X[sel]
    if m <= exact_max:
        S = S - S.mean(axis=0)
        sq = np.einsum("ij,ij->i", S, S)
        total = 0.0
        step = max(1, (_BLOCK_BYTES // 8) // m)
        for s in range(0, m, step):
            g = sq[s:s + step, None] - 2 * (S[s:s + step] @ S.T) + sq[None, :]
            d = np.sqrt(np.maximum(g, 0.0))
            # Only pairs (i, j) with j > i: each unordered pair once, never a row with itself.
            i = np.arange(s, min(s + step, m))[:, None]
            total += float(d[np.arange(m)[None, :] > i].sum())
        pairs = m * (m - 1) // 2
        return {"mean_pairwise": total / pairs, "pairs": pairs, "pairs_sampled": False}
    rng = np.random.default_rng(seed)
    a = rng.integers(0, m, size=sample)
    b = rng.integers(0, m - 1, size=sample)
    b += b >= a  # a uniform second row different from the first
    diff = S[a] - S[b]
    d = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    return {"mean_pairwise": float(d.mean()), "pairs": int(sample), "pairs_sampled": True}


def coverage(X, selected, *, exact_below: int = EXACT_MAX_PAIRS, seed: int = 0) -> dict[str, Any]:
    """Radius, mean and median nearest-selected distance over the pool, and mean pairwise distance inside."""
    dist, method = nearest_selected(X, selected, exact_below=exact_below, seed=seed)
    return {
        "radius": float(dist.max()),
        "mean_nearest": float(dist.mean()),
        "median_nearest": float(np.median(dist)),
        "search": method,
        **mean_pairwise(X, selected, seed=seed),
    }
