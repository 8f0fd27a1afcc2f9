"""`dedup` selector: drop exact duplicates (after text normalisation) and near duplicates (embedding cosine)."""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from dqf import BASE_COLUMNS, DqfError, PluginOptions, PluginSpec, Selector

from dqf.select import default_embedder, greedy_diverse, order_by_score

_DERIVED = ("prompt", "both")


class DedupOptions(PluginOptions):
    field: str = Field(default="instruction",
                       description="Text compared for exact duplicates: instruction, output, prompt, both or a column.")
    threshold: Optional[float] = Field(
        default=0.95, gt=-1, le=1,
        description="Near duplicate: embedding cosine similarity >= this to a kept row. None: exact dedup only.")
    embedder: PluginSpec = Field(default_factory=default_embedder,
                                 description="Embedder for near duplicates (its own `field` decides the text; "
                                             "default: all-MiniLM-L6-v2 over the instruction).")
    score_column: Optional[str] = Field(
        default=None, description="Keep the best row of each duplicate group by this column (default: first in input).")
    descending: bool = Field(default=True, description="With score_column: higher is better.")
    exact_below: int = Field(default=20_000, ge=0,
                             description="Exact similarity search below this many rows; HNSW (hnswlib) from there on.")
    ef: int = Field(default=200, ge=1, description="HNSW search breadth.")
    M: int = Field(default=16, ge=2, description="HNSW graph degree.")
    ef_construction: int = Field(default=200, ge=1, description="HNSW build breadth.")


def normalise(texts: list[str]) -> list[str]:
    """Lower-case, strip punctuation (anything not a word character or space), collapse whitespace."""
    import polars as pl

    s = pl.Series(texts, dtype=pl.String).fill_null("")
    return (s.str.to_lowercase().str.replace_all(r"[^\w\s]|_", "").str.replace_all(r"\s+", " ")
            .str.strip_chars()).to_list()


class DedupSelector(Selector):
    """Keep one row per group of duplicates: exact after normalisation, then near duplicates by cosine.

    Rows are walked best first (``score_column``, else input order). A row is dropped when its
    normalised text equals that of a row kept before it, or when its embedding's cosine
    similarity to a kept row is at least ``threshold``.
    """

    name = "dedup"
    version = "1"
    Options = DedupOptions
    nested_plugins = {"embedder": "embedder"}

    def requires(self):
        o = self.options
        need = {o.score_column} if o.score_column else set()
        if o.field not in BASE_COLUMNS and o.field not in _DERIVED:
            need.add(o.field)
        emb = self.nested.get("embedder")
        if o.threshold is not None and emb is not None:
            need |= set(emb.requires())
        return need

    def select(self, rows, context):
        import numpy as np

        from dqf import row_texts

        o = self.options
        order = order_by_score(rows, o.score_column, o.descending)
        keys = normalise(row_texts(rows, o.field))
        seen: set[str] = set()
        first = []
        for i in order:
            if keys[i] not in seen:
                seen.add(keys[i])
                first.append(int(i))
        exact_dropped = rows.height - len(first)
        kept = np.asarray(first, dtype=np.int64)
        if o.threshold is not None and kept.size > 1:
            emb = self.nested.get("embedder")
            if emb is None:
                raise DqfError("dedup: no embedder instance; build the selector from a recipe (which instantiates "
                               "`embedder`) or set selector.nested['embedder']")
            X = context.embeddings(emb, rows[kept])
            with context.progress(f"{context.step_id}: near duplicates", total=int(kept.size)) as advance:
                pos = greedy_diverse(X, np.arange(kept.size), o.threshold, inclusive=False,
                                     exact_below=o.exact_below, ef=o.ef, M=o.M, ef_construction=o.ef_construction,
                                     seed=context.seed, progress=advance)
            kept = kept[np.asarray(pos, dtype=np.int64)]
        self._stats = {"exact_duplicates": exact_dropped, "near_duplicates": len(first) - int(kept.size),
                       "kept": int(kept.size)}
        return np.sort(kept)

    def drop_reason(self):
        o = self.options
        s = self._stats
        counts = f" ({s['exact_duplicates']} exact, {s['near_duplicates']} near)" if s else ""
        near = f" or near duplicate (cosine >= {o.threshold})" if o.threshold is not None else ""
        best = f"best by {o.score_column}" if o.score_column else "first"
        return f"dedup: exact duplicate of {o.field} after normalisation{near} of a kept row{counts}; kept the {best}"
