"""How many rows a selector keeps: an absolute `k` or a `fraction` of its input, never both."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Optional

from pydantic import Field, model_validator

from dqf import PluginOptions


class BudgetOptions(PluginOptions):
    k: Optional[int] = Field(default=None, gt=0, description="Keep this many rows (all of them if fewer).")
    fraction: Optional[float] = Field(default=None, gt=0, le=1, description="Keep this fraction of the input rows.")

    @model_validator(mode="after")
    def _one_budget(self):
        if (self.k is None) == (self.fraction is None):
            raise ValueError("give exactly one of `k` or `fraction`")
        return self

    def budget(self, n: int) -> int:
        if self.k is not None:
            return min(self.k, n)
        # Exact decimal arithmetic: 0.07 * 100 is 7.000000000000001 in floats, which would round up to 8.
        return min(n, math.ceil(Fraction(repr(self.fraction)) * n))
