"""`dqf compare`: measure several selections of one pool side by side (overlap, scores, lengths, coverage, labels)."""

from __future__ import annotations

from dqf.compare.runner import CompareResult, compare

__all__ = ["compare", "CompareResult"]
