"""`deita-score` scorer: DEITA's evol score, Σ over a row's turns of complexity x quality (Liu et al. 2024)."""

from __future__ import annotations

from pydantic import Field

from dqf import PluginOptions, Scorer


class DeitaScoreOptions(PluginOptions):
    complexity_column: str = Field(default="deita_complexity",
                                   description="Column of a `deita-complexity` step (its `<column>_turns` is read).")
    quality_column: str = Field(default="deita_quality",
                                description="Column of a `deita-quality` step (its `<column>_turns` is read).")
    column: str = Field(default="deita_score", description="Output column.")


def evol_score(complexity, quality) -> float | None:
    """Σ_i complexity_i · quality_i over the turns; None when a list is missing, holds a null or the lengths differ."""
    if complexity is None or quality is None or len(complexity) != len(quality) or not complexity:
        return None
    if any(v is None for v in complexity) or any(v is None for v in quality):
        return None
    return float(sum(c * q for c, q in zip(complexity, quality)))


class DeitaScoreScorer(Scorer):
    """Combines the per-turn scores of the two DEITA scorers as DEITA ranks rows: Σ_turns complexity × quality.

    No model: it reads the `<column>_turns` lists of earlier `deita-complexity` and `deita-quality`
    steps, so its cache entry is keyed by theirs (a changed scorer recomputes it).
    """

    name = "deita-score"
    version = "1"
    Options = DeitaScoreOptions
    batch_size = 65536  # arithmetic only

    def _inputs(self) -> tuple[str, str]:
        o = self.options
        return f"{o.complexity_column}_turns", f"{o.quality_column}_turns"

    def requires(self):
        return set(self._inputs())

    def columns(self):
        import polars as pl

        return {self.options.column: pl.Float64}

    def score(self, batch):
        import polars as pl

        c, q = self._inputs()
        values = [evol_score(a, b) for a, b in zip(batch[c].to_list(), batch[q].to_list())]
        missing = sum(v is None for v in values)
        self.count("rows_scored", batch.height)
        self._stats["null_scores"] = self._stats.get("null_scores", 0) + missing
        return pl.DataFrame({self.options.column: values}, schema=self.columns())
