"""`random` selector: a seeded uniform sample of k rows (or a fraction)."""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from dqf import BudgetOptions, Selector



class RandomOptions(BudgetOptions):
    seed: Optional[int] = Field(default=None, description="Sampling seed (default: the recipe's seed).")


class RandomSelector(Selector):
    """Keep a uniform random sample; the same seed and input give the same rows."""

    name = "random"
    Options = RandomOptions

    def select(self, rows, context):
        import numpy as np

        seed = self.options.seed if self.options.seed is not None else context.seed
        # Draw over rows sorted by id so the sample does not depend on input order.
        order = np.argsort(rows["id"].to_numpy(), kind="stable")
        k = self.options.budget(rows.height)
        return order[np.random.default_rng(seed).choice(rows.height, size=k, replace=False)]

    def drop_reason(self):
        o = self.options
        return f"not in random sample ({f'k={o.k}' if o.k is not None else f'fraction={o.fraction}'})"
