"""`kmeans-quality` selector: kMQ from "Diversify and Conquer" (Yu et al. 2024).

Cluster the rows' embeddings with k-means, split the budget across clusters in proportion to
their sizes, and inside each cluster sample rows without replacement with probability
proportional to ``exp(quality / temperature)``.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Optional

from pydantic import Field

from dqf import BudgetOptions, PluginSpec

from dqf.select import EmbeddingSelector, default_embedder


class KmeansQualityOptions(BudgetOptions):
    quality_column: str = Field(description="Column of quality scores (higher is better), e.g. a reward.")
    n_clusters: int = Field(default=100, gt=0, description="k-means clusters (at most one per row).")
    temperature: float = Field(default=1.0, gt=0, description="Sampling weight is exp(quality / temperature): "
                                                             "small values take the best rows of each cluster, "
                                                             "large ones sample uniformly.")
    seed: Optional[int] = Field(default=None, description="Seed of k-means++ and of the sampling (default: the "
                                                          "recipe's seed).")
    max_iter: int = Field(default=100, gt=0, description="Most Lloyd iterations.")
    n_init: int = Field(default=1, gt=0, description="k-means restarts; the lowest inertia wins.")
    embedder: PluginSpec = Field(default_factory=default_embedder,
                                 description="Embedder giving the vectors (default: all-MiniLM-L6-v2, mean pooled "
                                             "and normalized, over the instruction).")



def kmeans(X, n_clusters: int, rng, max_iter: int = 100, tol: float = 1e-6):
    """Lloyd's algorithm with k-means++ initialization. Returns ``(labels, centers, inertia)``."""
    import numpy as np

    X = np.asarray(X, dtype=np.float64)
    n = X.shape[0]
    c = min(n_clusters, n)
    sq = np.einsum("ij,ij->i", X, X)
    centers = np.empty((c, X.shape[1]))
    centers[0] = X[rng.integers(n)]
    d2 = np.maximum(sq - 2 * X @ centers[0] + centers[0] @ centers[0], 0)
    for j in range(1, c):
        total = d2.sum()
        i = rng.choice(n, p=d2 / total) if total > 0 else rng.integers(n)
        centers[j] = X[i]
        d2 = np.minimum(d2, np.maximum(sq - 2 * X @ centers[j] + centers[j] @ centers[j], 0))
    labels = np.zeros(n, dtype=np.int64)
    for _ in range(max_iter):
        dist = np.maximum(sq[:, None] - 2 * X @ centers.T + np.einsum("ij,ij->i", centers, centers)[None, :], 0)
        labels = dist.argmin(axis=1)
        new = centers.copy()
        counts = np.bincount(labels, minlength=c)
        sums = np.zeros_like(centers)
        np.add.at(sums, labels, X)
        filled = counts > 0
        new[filled] = sums[filled] / counts[filled, None]
        if (~filled).any():  # an empty cluster restarts at the row farthest from its centre
            far = np.argsort(-dist[np.arange(n), labels])[: int((~filled).sum())]
            new[~filled] = X[far]
        shift = float(np.abs(new - centers).max())
        centers = new
        if shift <= tol:
            break
    dist = np.maximum(sq[:, None] - 2 * X @ centers.T + np.einsum("ij,ij->i", centers, centers)[None, :], 0)
    labels = dist.argmin(axis=1)
    return labels, centers, float(dist[np.arange(n), labels].sum())


def split_budget(sizes, k: int) -> list[int]:
    """Quotas ∝ cluster size summing to ``min(k, Σ sizes)``: largest remainders, capped by size, leftovers redistributed."""
    sizes = [int(s) for s in sizes]
    k = min(k, sum(sizes))
    quota = [0] * len(sizes)
    left = k
    while left > 0:
        open_ = [i for i, s in enumerate(sizes) if quota[i] < s]
        weight = sum(sizes[i] for i in open_)
        exact = {i: Fraction(left * sizes[i], weight) for i in open_}
        give = {i: min(int(exact[i]), sizes[i] - quota[i]) for i in open_}
        rem = left - sum(give.values())
        # largest remainder first; ties to the larger cluster, then the lower index
        for i in sorted(open_, key=lambda i: (-(exact[i] - int(exact[i])), -sizes[i], i)):
            if rem == 0:
                break
            if quota[i] + give[i] < sizes[i]:
                give[i] += 1
                rem -= 1
        for i in open_:
            quota[i] += give[i]
        left = k - sum(quota)
    return quota


class KmeansQualitySelector(EmbeddingSelector):
    """k-means over embeddings, budget ∝ cluster size, quality-weighted sampling without replacement in each cluster.

    Rows with a missing quality are sampled only after every scored row of their cluster.
    """

    name = "kmeans-quality"
    version = "1"
    Options = KmeansQualityOptions
    score_option = "quality_column"

    def select_from(self, rows, X, k, context):
        import numpy as np

        o = self.options
        q = rows[o.quality_column].cast(float).to_numpy().astype(np.float64)
        return self.pick(X, q, k, o.seed if o.seed is not None else context.seed)

    def pick(self, X, quality, k: int, seed: int):
        """Positions of the picked rows (ascending), given embeddings, quality scores, budget and seed."""
        import numpy as np

        o = self.options
        rng = np.random.default_rng(seed)
        best = None
        for _ in range(o.n_init):
            res = kmeans(X, o.n_clusters, rng, o.max_iter)
            if best is None or res[2] < best[2]:
                best = res
        labels = best[0]
        c = int(labels.max()) + 1 if len(labels) else 0
        sizes = np.bincount(labels, minlength=c)
        quotas = split_budget(sizes, k)
        # Gumbel-top-m: the m largest of log w + Gumbel noise are a sample without replacement with p ∝ w
        q = np.asarray(quality, dtype=np.float64)
        logw = np.where(np.isfinite(q), q / o.temperature, -np.inf)
        keys = logw + rng.gumbel(size=len(q))
        tiebreak = rng.random(len(q))
        picks = []
        for j in range(c):
            if quotas[j] == 0:
                continue
            members = np.flatnonzero(labels == j)
            order = np.lexsort((-tiebreak[members], -keys[members]))
            picks.extend(members[order[: quotas[j]]].tolist())
        self._stats = {"picked": len(picks), "budget": k, "clusters": c, "inertia": best[2],
                       "cluster_sizes": sizes.tolist(), "cluster_quotas": quotas}
        return np.sort(np.asarray(picks, dtype=np.int64))

    def drop_reason(self):
        o = self.options
        size = f"k={o.k}" if o.k is not None else f"fraction={o.fraction}"
        return (f"not sampled by kmeans-quality ({size}, n_clusters={o.n_clusters}, temperature={o.temperature}, "
                f"by {o.quality_column})")
