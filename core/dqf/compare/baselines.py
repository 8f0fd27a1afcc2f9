"""The reference points every strategy is read against: a seeded random-k and the k longest outputs."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from dqf.compare.strategies import Strategy

if TYPE_CHECKING:
    from dqf.compare.pool import Pool

RANDOM = "base:random-k"
LONGEST = "base:longest-k"


def words(texts) -> np.ndarray:
    """Whitespace-separated words per text (null counts as empty)."""
    return np.fromiter((len(t.split()) if t else 0 for t in texts), dtype=np.int64, count=len(texts))


def baselines(pool: "Pool", k: int, seed: int, size_from: str) -> list[Strategy]:
    """Two baselines of ``k`` rows (the size of the first strategy, ``size_from``).

    One size for both, not one per strategy: a baseline is then a single, fixed point of
    reference, and strategies whose sizes differ from it are read with that in mind.
    Random is drawn over the rows sorted by id, as the ``random`` selector draws, so it does not
    depend on input order; longest is by output words ("Long Is More", Zhao et al. 2024), ties
    in pool order.
    """
    n = pool.size
    k = max(0, min(int(k), n))
    ids = pool.ids.to_numpy()
    by_id = np.argsort(ids, kind="stable")
    rnd = np.zeros(n, dtype=bool)
    rnd[by_id[np.random.default_rng(seed).choice(n, size=k, replace=False)]] = True
    out_words = words(pool.frame["output"].to_list())
    longest = np.zeros(n, dtype=bool)
    longest[np.argsort(-out_words, kind="stable")[:k]] = True
    return [
        Strategy(name=RANDOM, kind="baseline", mask=rnd,
                 note=f"{k:,} rows drawn uniformly (seed {seed}); k = size of {size_from}"),
        Strategy(name=LONGEST, kind="baseline", mask=longest,
                 note=f"the {k:,} rows with the most output words; k = size of {size_from}"),
    ]
