"""`top-k` selector: the k rows (or a fraction) with the highest (or lowest) value of a column."""

from __future__ import annotations

from pydantic import Field

from dqf import BudgetOptions, Selector



class TopKOptions(BudgetOptions):
    column: str = Field(description="Column to rank by.")
    descending: bool = Field(default=True, description="Keep the largest values (false: the smallest).")


class TopKSelector(Selector):
    """Keep the k rows ranked first by `column`; ties keep input order, nulls (and NaN) rank last."""

    name = "top-k"
    Options = TopKOptions

    def requires(self):
        return {self.options.column}

    def select(self, rows, context):
        import polars as pl

        k = self.options.budget(rows.height)
        col = pl.col(self.options.column)
        if rows.schema[self.options.column].is_float():
            col = col.fill_nan(None)  # NaN ranks last like null, not above every number
        order = (
            rows.select(col)
            .with_row_index("_pos")
            .sort(self.options.column, descending=self.options.descending, nulls_last=True, maintain_order=True)
        )
        return order["_pos"].head(k).to_list()

    def drop_reason(self):
        o = self.options
        size = f"k={o.k}" if o.k is not None else f"fraction={o.fraction}"
        return f"not in top-k by {o.column} ({'descending' if o.descending else 'ascending'}, {size})"
