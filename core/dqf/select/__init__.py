"""dqf.select: the public selection toolkit for plugins: k-center greedy coverage, nearest-neighbour search and
EmbeddingSelector, the base of budgeted selectors over embeddings.

Importing it is cheap: the nearest-neighbour helpers import numpy inside their functions, and the
k-center module (which needs numpy at import) loads on first use of its names.
"""

from __future__ import annotations

from dqf.select.selector import EmbeddingSelector
from dqf.select.ann import (EXACT_MAX_PAIRS, default_embedder, greedy_diverse, knn_search, nearest_selected,
                            order_by_score, pair_cosines, require_hnswlib, unit_rows)

#: Names of dqf.select.kcenter, which imports numpy when it loads.
_KCENTER = ("kcenter_greedy", "kcenter_radius")

__all__ = ["EmbeddingSelector", *_KCENTER, "knn_search", "nearest_selected", "EXACT_MAX_PAIRS", "greedy_diverse", "order_by_score",
           "unit_rows", "default_embedder", "require_hnswlib", "pair_cosines"]


def __getattr__(name):
    if name in _KCENTER:
        from dqf.select import kcenter

        return getattr(kcenter, name)
    raise AttributeError(f"module 'dqf.select' has no attribute {name!r}")
