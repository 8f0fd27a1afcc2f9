"""`keyword` scorer: how often a list of words occurs in each row, as one vectorised polars expression."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from dqf import PluginOptions, Scorer


#: Characters with a meaning in polars' (Rust) regex syntax; escaped so a word is matched literally.
_META = set("\\.+*?()|[]{}^$#&-~")


def _literal(word: str) -> str:
    return "".join("\\" + c if c in _META else c for c in word)


class KeywordOptions(PluginOptions):
    words: list[str] = Field(min_length=1, description="Words or phrases to count (case-insensitive, whole words).")
    field: Literal["instruction", "output", "both"] = Field(
        default="both", description="Where to count: the instruction, the output, or both (summed)."
    )

    @field_validator("words")
    @classmethod
    def _whole_words(cls, words: list[str]) -> list[str]:
        out: list[str] = []
        for w in words:
            w = w.strip().lower()
            # \b only matches next to a word character, so "c++" or "?" could never match whole.
            if not re.fullmatch(r"\w(.*\w)?", w, flags=re.DOTALL):
                raise ValueError(f"{w!r} must start and end with a letter, digit or underscore")
            if w not in out:  # a word listed twice would be counted twice
                out.append(w)
        return out


class KeywordScorer(Scorer):
    """Count case-insensitive whole-word matches of `words` in the instruction and/or output."""

    name = "keyword"
    version = "1"  # bump when the counting rule changes, so cached counts are recomputed
    Options = KeywordOptions
    batch_size = 65536  # pure polars, cheap per row: big batches mean fewer cache shards

    def columns(self):
        import polars as pl

        return {"keyword_hits": pl.Int32}

    def score(self, batch):
        import polars as pl

        fields = ["instruction", "output"] if self.options.field == "both" else [self.options.field]
        hits = [
            pl.col(f).str.count_matches(rf"(?i)\b{_literal(word)}\b")
            for f in fields
            for word in self.options.words
        ]
        return batch.select(pl.sum_horizontal(hits).cast(pl.Int32).alias("keyword_hits"))
