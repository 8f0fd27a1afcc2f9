"""Helpers shared by scorer tests beyond :mod:`dqf.testing`: short real rows from a pool."""

from __future__ import annotations

import json
from pathlib import Path

from dqf.testing import answer_nll, scorer_batch  # noqa: F401 - re-exported for the tests

__all__ = ["scorer_batch", "short_pool_rows", "answer_nll"]


def short_pool_rows(pool: Path, n: int = 10, max_words: int = 60) -> list[dict]:
    """The first ``n`` rows of a jsonl pool with a non-empty output and at most ``max_words`` words in all."""
    rows = []
    for line in Path(pool).read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if len((r["instruction"] + " " + r["input"] + " " + r["output"]).split()) <= max_words and r["output"]:
            rows.append(r)
        if len(rows) == n:
            break
    return rows
