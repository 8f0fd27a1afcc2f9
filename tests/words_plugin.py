"""A small scorer the core tests register as a recipe's local plugin module, so they do not depend on contrib.

``words``: ``instruction_words`` and ``output_words`` (whitespace-separated words), ``output_ttr`` (distinct
words / words; null for an output without words) and ``words_ok`` (``output_words >= min_words``).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

import dqf

PATH = Path(__file__).resolve()


class WordsOptions(dqf.PluginOptions):
    min_words: int = Field(default=1, ge=0, description="words_ok needs at least this many output words.")


class WordsScorer(dqf.Scorer):
    """Word counts of the instruction and the output, and whether the output has enough words."""

    name = "words"
    Options = WordsOptions

    def columns(self):
        import polars as pl

        return {"instruction_words": pl.Int32, "output_words": pl.Int32, "output_ttr": pl.Float64,
                "words_ok": pl.Boolean}

    def score(self, batch):
        import polars as pl

        tokens = {c: pl.col(c).str.split(" ").list.eval(pl.element().filter(pl.element() != ""))
                  for c in ("instruction", "output")}
        n_out = tokens["output"].list.len().cast(pl.Int32)
        ttr = pl.when(n_out > 0).then(tokens["output"].list.n_unique() / n_out).otherwise(None)
        return batch.select(tokens["instruction"].list.len().cast(pl.Int32).alias("instruction_words"),
                            n_out.alias("output_words"), ttr.alias("output_ttr"),
                            (n_out >= self.options.min_words).alias("words_ok"))


@dqf.hookimpl
def dqf_register_scorers(register):
    register(WordsScorer)
