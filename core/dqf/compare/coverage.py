"""How well a selection covers the pool in embedding space: nearest-selected distances (exact or HNSW) and spread."""

from __future__ import annotations

from typing import Any

import numpy as np

#: Pool rows x selected rows at or below which nearest neighbours are found exactly; HNSW above.
#: Exact costs about 1.5 s per 1e8 pairs at 384 dimensions on 2 CPU cores (52k x 9k: 7 s), no slower
#: than building and querying an index at that size, so the index only pays off beyond ~1e9.
EXACT_MAX_PAIRS = 1_000_000_000
#: Selections up to this size get every pair for the mean pairwise distance; larger ones a sample.
PAIRWISE_EXACT_MAX = 2_000
#: Pairs drawn when the selection is larger than :data:`PAIRWISE_EXACT_MAX`.
PAIRWISE_SAMPLE = 200_000
# Keeps each (rows x selected) block of the exact search near 64 MiB of float32.
_BLOCK_BYTES = 64 << 20


def _require_hnswlib():
    try:
        import hnswlib
    except ImportError:
        from .. import missing_dependency

        raise missing_dependency("hnswlib", extra="contrib") from None
    return hnswlib


def nearest_selected(X, selected, *, exact_below: int = EXACT_MAX_PAIRS, seed: int = 0) -> tuple[np.ndarray, str]:
    """Euclidean distance from every row of ``X`` to its nearest row among ``selected``; and the method used.

    The search (which selected row is nearest) runs in float32, exactly by chunked matrix
    products while ``len(X) * len(selected) <= exact_below``, else with an HNSW index over the
    selected rows. The distance to the row found is then recomputed directly in float64, so
    the expanded-square rounding never shows in the numbers, and a selected row's own
    distance is exactly 0. HNSW may return a neighbour that is not the nearest, which can
    only overstate a distance.
    """
    X = np.asarray(X, dtype=np.float32)
    sel = np.unique(np.asarray(selected, dtype=np.int64))
    n = X.shape[0]
    if not sel.size:
        raise ValueError("nearest_selected: the selection is empty")
    if n * sel.size <= exact_below:
        nearest, method = _exact_argmin(X, sel), "exact"
    else:
        nearest, method = _hnsw_argmin(X, sel, seed), "hnsw"
    dist = np.empty(n, dtype=np.float64)
    step = max(1, _BLOCK_BYTES // (16 * X.shape[1]))  # two float64 blocks at a time, not two copies of X
    for s in range(0, n, step):
        diff = X[s:s + step].astype(np.float64) - X[sel[nearest[s:s + step]]].astype(np.float64)
        dist[s:s + step] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    dist[sel] = 0.0
    return dist, method


def _exact_argmin(X: np.ndarray, sel: np.ndarray) -> np.ndarray:
    # Centring removes the component embeddings share, which is most of float32's cancellation error.
    mu = X.mean(axis=0, dtype=np.float64).astype(np.float32)
    C = X[sel] - mu
    sqc = np.einsum("ij,ij->i", C, C)
    rows = max(1, _BLOCK_BYTES // (4 * max(1, C.shape[0])))
    out = np.empty(X.shape[0], dtype=np.int64)
    for s in range(0, X.shape[0], rows):
        xb = X[s:s + rows] - mu
        g = xb @ C.T
        g *= -2
        g += sqc[None, :]  # |x|^2 is the same for every centre, so the argmin does not need it
        out[s:s + rows] = g.argmin(axis=1)
    return out


def _hnsw_argmin(X: np.ndarray, sel: np.ndarray, seed: int) -> np.ndarray:
    hnswlib = _require_hnswlib()
    index = hnswlib.Index(space="l2", dim=X.shape[1])
    index.init_index(max_elements=sel.size, ef_construction=200, M=16, random_seed=seed)
    index.add_items(X[sel], np.arange(sel.size))
    index.set_ef(128)
    labels, _ = index.knn_query(X, k=1)
    return labels[:, 0].astype(np.int64)


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
