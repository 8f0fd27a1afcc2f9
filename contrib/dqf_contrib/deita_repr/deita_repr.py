"""`deita-repr` selector: DEITA's score-first, diversity-aware selection (Liu et al. 2024)."""

from __future__ import annotations

from typing import Optional

from pydantic import Field, model_validator

from dqf import BudgetOptions, PluginSpec
from dqf.select import EmbeddingSelector, default_embedder, greedy_diverse, order_by_score


class DeitaReprOptions(BudgetOptions):
    score_column: str = Field(description="Column ranking the rows (e.g. a DEITA complexity x quality score).")
    descending: bool = Field(default=True, description="Higher score_column is better.")
    tau: float = Field(default=0.9, gt=-1, le=1,
                       description="Take a row only if its cosine similarity to every row taken is <= tau "
                                   "(DEITA: 0.9, with Mistral-7B last-token states).")
    tau_quantile: Optional[float] = Field(default=None, gt=0, lt=1, description=(
        "Instead of tau: tau is this quantile of the cosines between pairs of pool rows (a seeded sample of at "
        "most 2,000 rows), so the threshold means the same with any embedder: 0.99 rejects a row only if it "
        "is closer to a taken row than 99% of random pairs are."))
    embedder: PluginSpec = Field(default_factory=default_embedder,
                                 description="Embedder giving the vectors (default: all-MiniLM-L6-v2 over the "
                                             "instruction; DEITA's own: a causal LM's last-token state of the "
                                             "vicuna-rendered conversation, `hf-encoder` with pooling = 'last', "
                                             "template = 'vicuna').")
    exact_below: int = Field(default=20_000, ge=0,
                             description="Exact similarity checks while fewer than this many rows can be taken "
                                         "(min(pool, k)); HNSW (hnswlib) from there on.")
    ef: int = Field(default=200, ge=1, description="HNSW search breadth.")
    M: int = Field(default=16, ge=2, description="HNSW graph degree.")
    ef_construction: int = Field(default=200, ge=1, description="HNSW build breadth.")

    @model_validator(mode="after")
    def _one_threshold(self):
        if self.tau_quantile is not None and "tau" in self.model_fields_set:
            raise ValueError("set tau or tau_quantile, not both")
        return self



class DeitaReprSelector(EmbeddingSelector):
    """Walk rows by descending score; take one only if no row taken so far has cosine > tau to it; stop at k."""

    name = "deita-repr"
    version = "1"
    Options = DeitaReprOptions

    def select_from(self, rows, X, k, context):
        import numpy as np

        o = self.options
        tau = o.tau if o.tau_quantile is None else pair_cosine_quantile(X, o.tau_quantile, context.seed)
        order = order_by_score(rows, o.score_column, o.descending)
        with context.progress(f"{context.step_id}: deita-repr", total=rows.height) as advance:
            picks = greedy_diverse(X, order, tau, inclusive=True, limit=k, exact_below=o.exact_below, ef=o.ef,
                                   M=o.M, ef_construction=o.ef_construction, seed=context.seed, progress=advance)
        self._stats = {"picked": len(picks), "budget": k, "tau": round(float(tau), 6)}
        return np.asarray(picks, dtype=np.int64)

    def drop_reason(self):
        o = self.options
        size = f"k={o.k}" if o.k is not None else f"fraction={o.fraction}"
        tau = f"tau={o.tau}" if o.tau_quantile is None else f"tau=q{o.tau_quantile} of pair cosines"
        return f"not picked by deita-repr ({size}, {tau}, by {o.score_column})"


def pair_cosine_quantile(X, q: float, seed: int, sample: int = 2000) -> float:
    """The ``q``-quantile of the cosine similarities between distinct pairs of a seeded sample of ``X``'s rows."""
    import numpy as np

    rng = np.random.default_rng(seed)
    idx = rng.choice(len(X), size=min(len(X), sample), replace=False) if len(X) > sample else np.arange(len(X))
    if len(idx) < 2:
        return 1.0
    U = np.asarray(X[idx], dtype=np.float64)
    U /= np.maximum(np.linalg.norm(U, axis=1, keepdims=True), 1e-12)
    sims = (U @ U.T)[np.triu_indices(len(idx), 1)]
    return float(np.quantile(sims, q))
