"""`threshold` selector: keep rows whose column lies within [min, max]."""

from __future__ import annotations

from typing import Optional

from pydantic import Field, model_validator

from dqf import PluginOptions, Selector


class ThresholdOptions(PluginOptions):
    column: str = Field(description="Numeric column to test.")
    min: Optional[float] = Field(default=None, description="Lowest value kept.")
    max: Optional[float] = Field(default=None, description="Highest value kept.")
    inclusive: bool = Field(default=True, description="Keep values equal to min or max.")

    @model_validator(mode="after")
    def _some_bound(self):
        if self.min is None and self.max is None:
            raise ValueError("give `min`, `max` or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"`min` ({self.min}) is greater than `max` ({self.max})")
        return self


class ThresholdSelector(Selector):
    """Keep rows whose `column` lies within [min, max]; rows with a null (or NaN) value are dropped."""

    name = "threshold"
    Options = ThresholdOptions

    def requires(self):
        return {self.options.column}

    def select(self, rows, context):
        import polars as pl

        o = self.options
        col = pl.col(o.column)
        if rows.schema[o.column].is_float():
            col = col.fill_nan(None)  # NaN lies in no range; polars would order it above every number
        cond = pl.lit(True)
        if o.min is not None:
            cond = cond & (col >= o.min if o.inclusive else col > o.min)
        if o.max is not None:
            cond = cond & (col <= o.max if o.inclusive else col < o.max)
        return rows.select(cond.fill_null(False).alias("keep"))["keep"]

    def drop_reason(self):
        o = self.options
        lo = "[" if o.inclusive else "("
        hi = "]" if o.inclusive else ")"
        rng = f"{lo}{'-inf' if o.min is None else o.min}, {'inf' if o.max is None else o.max}{hi}"
        return f"{o.column} not in {rng}"
