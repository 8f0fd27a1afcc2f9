"""`deita-repr` selector: DEITA's score-first, diversity-aware selection (Liu et al. 2024)."""

from __future__ import annotations

from pydantic import Field

from dqf import BudgetOptions, PluginSpec
from dqf.select import EmbeddingSelector, default_embedder, greedy_diverse, order_by_score


class DeitaReprOptions(BudgetOptions):
    score_column: str = Field(description="Column ranking the rows (e.g. a DEITA complexity x quality score).")
    descending: bool = Field(default=True, description="Higher score_column is better.")
    tau: float = Field(default=0.9, gt=-1, le=1,
                       description="Take a row only if its cosine similarity to every row taken is <= tau.")
    embedder: PluginSpec = Field(default_factory=default_embedder,
                                 description="Embedder giving the vectors (default: all-MiniLM-L6-v2 over the "
                                             "instruction; DEITA uses its scorer model's last hidden state).")
    exact_below: int = Field(default=20_000, ge=0,
                             description="Exact similarity checks while fewer than this many rows can be taken "
                                         "(min(pool, k)); HNSW (hnswlib) from there on.")
    ef: int = Field(default=200, ge=1, description="HNSW search breadth.")
    M: int = Field(default=16, ge=2, description="HNSW graph degree.")
    ef_construction: int = Field(default=200, ge=1, description="HNSW build breadth.")



class DeitaReprSelector(EmbeddingSelector):
    """Walk rows by descending score; take one only if no row taken so far has cosine > tau to it; stop at k."""

    name = "deita-repr"
    version = "1"
    Options = DeitaReprOptions

    def select_from(self, rows, X, k, context):
        import numpy as np

        o = self.options
        order = order_by_score(rows, o.score_column, o.descending)
        with context.progress(f"{context.step_id}: deita-repr", total=rows.height) as advance:
            picks = greedy_diverse(X, order, o.tau, inclusive=True, limit=k, exact_below=o.exact_below, ef=o.ef,
                                   M=o.M, ef_construction=o.ef_construction, seed=context.seed, progress=advance)
        self._stats = {"picked": len(picks), "budget": k}
        return np.asarray(picks, dtype=np.int64)

    def drop_reason(self):
        o = self.options
        size = f"k={o.k}" if o.k is not None else f"fraction={o.fraction}"
        return f"not picked by deita-repr ({size}, tau={o.tau}, by {o.score_column})"
