"""`knn-distance` probe: mean distance from each row to its k nearest neighbours among all rows of its input."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from dqf import PluginOptions, PluginSpec, Probe

from dqf.select import default_embedder, knn_search


class KnnDistanceOptions(PluginOptions):
    k: int = Field(default=10, ge=1, description="Neighbours per row.")
    metric: Literal["cosine", "l2"] = Field(default="cosine",
                                            description="cosine: 1 - cosine similarity; l2: Euclidean distance.")
    embedder: PluginSpec = Field(default_factory=default_embedder,
                                 description="Embedder giving the vectors (default: all-MiniLM-L6-v2, mean pooled, "
                                             "normalized, over the instruction).")
    exact_below: int = Field(default=20_000, ge=0,
                             description="Exact search below this many rows; HNSW (hnswlib) from there on.")
    ef: int = Field(default=200, ge=1, description="HNSW search breadth (higher: better recall, slower).")
    M: int = Field(default=16, ge=2, description="HNSW graph degree.")
    ef_construction: int = Field(default=200, ge=1, description="HNSW build breadth.")
    seed: int = Field(default=0, description="Seed of the HNSW graph's level draws.")
    column: str = Field(default="knn_distance", description="Name of the output column.")


class KnnDistanceProbe(Probe):
    """Mean distance to the k nearest other rows of the step's input: high = long tail / rare, low = crowded.

    A probe rather than a scorer because neighbours come from the whole pool, which a scorer
    (one batch at a time) cannot see. Rows with no other row to compare with get null.
    """

    name = "knn-distance"
    version = "1"
    Options = KnnDistanceOptions
    nested_plugins = {"embedder": "embedder"}

    def columns(self):
        import polars as pl

        return {self.options.column: pl.Float64}

    def requires(self):
        return self.nested_requires("embedder")

    def run(self, rows, context):
        import numpy as np
        import polars as pl

        o = self.options
        col = o.column
        if rows.height == 0:
            return pl.DataFrame({col: []}, schema={col: pl.Float64})
        X = context.embeddings(self.nested_plugin("embedder"), rows)
        _, dist = knn_search(X, o.k, metric=o.metric, exact_below=o.exact_below, ef=o.ef, M=o.M,
                             ef_construction=o.ef_construction, seed=o.seed)
        values = dist.mean(axis=1) if dist.shape[1] else np.full(rows.height, np.nan)
        self._stats = {"rows": rows.height, "neighbours": int(dist.shape[1]),
                       "search": "exact" if rows.height < o.exact_below else "hnsw"}
        return pl.DataFrame({col: values}, schema={col: pl.Float64}).select(pl.col(col).fill_nan(None))
