"""Rank statistics and distribution summaries: ROC AUC, Spearman's rho, quantiles and shared-edge histograms."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: Percentiles every distribution is summarised by.
QUANTILES = (5, 25, 50, 75, 95)
#: Bins of every histogram; edges are shared by the pool and all strategies so the bars line up.
BINS = 20


def rankdata(a) -> np.ndarray:
    """1-based ranks of ``a`` with ties given their average rank (as ``scipy.stats.rankdata``)."""
    a = np.asarray(a, dtype=np.float64)
    order = np.argsort(a, kind="mergesort")
    s = a[order]
    # Boundaries of runs of equal values: every member of a run gets the mean of its positions.
    new = np.r_[True, s[1:] != s[:-1]]
    starts = np.flatnonzero(new)
    ends = np.r_[starts[1:], s.size]
    avg = (starts + ends + 1) / 2.0
    ranks = np.empty(s.size, dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def roc_auc(scores, labels) -> float | None:
    """Probability that a random positive scores above a random negative (ties count half).

    The Mann-Whitney form, exact with ties. ``None`` when either class is absent.
    """
    scores = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(labels).astype(bool)
    n1 = int(pos.sum())
    n0 = pos.size - n1
    if n1 == 0 or n0 == 0:
        return None
    r = rankdata(scores)
    return float((r[pos].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def spearman(a, b) -> float | None:
    """Spearman's rank correlation (Pearson's r of average ranks); ``None`` when either side is constant."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.size < 2:
        return None
    ra, rb = rankdata(a), rankdata(b)
    ra -= ra.mean()
    rb -= rb.mean()
    den = math.sqrt(float(ra @ ra) * float(rb @ rb))
    if den == 0:
        return None
    return float(np.clip((ra @ rb) / den, -1.0, 1.0))


def _num(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def summarize(values) -> dict[str, Any]:
    """Count, mean and the :data:`QUANTILES` of the non-null, finite ``values``."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not v.size:
        return {"n": 0, "mean": None, "quantiles": {f"p{q}": None for q in QUANTILES}}
    qs = np.percentile(v, QUANTILES)
    return {"n": int(v.size), "mean": _num(float(v.mean())),
            "quantiles": {f"p{q}": _num(float(x)) for q, x in zip(QUANTILES, qs)}}


def bin_edges(pool_values, bins: int = BINS) -> list[float]:
    """Edges spanning the pool's 1st to 99th percentile, so one outlier does not squash every bar.

    Columns with few distinct integer values (flags, small counts, ratings) get one bin per
    value instead, centred on it.
    """
    v = np.asarray(pool_values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not v.size:
        return [0.0, 1.0]
    uniq = np.unique(v)
    if uniq.size <= bins and np.all(uniq == np.round(uniq)) and uniq[-1] - uniq[0] <= bins:
        lo, hi = float(uniq[0]), float(uniq[-1])
        return [x - 0.5 for x in np.arange(lo, hi + 2.0)]
    lo, hi = (float(x) for x in np.percentile(v, [1, 99]))
    if hi <= lo:
        lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return [float(x) for x in np.linspace(lo, hi, bins + 1)]


def histogram(values, edges) -> list[int]:
    """Counts per bin of ``edges``; values outside them are counted in the first or last bin."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    e = np.asarray(edges, dtype=np.float64)
    idx = np.clip(np.searchsorted(e, v, side="right") - 1, 0, e.size - 2)
    return np.bincount(idx, minlength=e.size - 1).astype(int).tolist()
