"""Per-strategy numbers that need no model: overlap, score and length distributions, field mix, label agreement."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from dqf.compare import stats
from dqf.compare.baselines import words

if TYPE_CHECKING:
    import polars as pl

    from dqf.compare.labels import LabelSet
    from dqf.compare.pool import Pool
    from dqf.compare.strategies import Strategy

#: Field values shown one by one in a mix; the rest are summed into "(other)".
MIX_TOP = 12


def overlap(strategies: list["Strategy"]) -> dict[str, Any]:
    """Pairwise intersection counts (diagonal: sizes) and Jaccard indices (null when both are empty)."""
    M = np.stack([s.mask for s in strategies]).astype(np.int64)
    inter = M @ M.T
    sizes = np.diag(inter)
    union = sizes[:, None] + sizes[None, :] - inter
    jac = [[(float(inter[i, j] / union[i, j]) if union[i, j] else None) for j in range(len(strategies))]
           for i in range(len(strategies))]
    return {"names": [s.name for s in strategies], "counts": inter.astype(int).tolist(), "jaccard": jac}


def distributions(columns: dict[str, np.ndarray], strategies: list["Strategy"]) -> dict[str, Any]:
    """For each column: shared bin edges, and the pool's and each strategy's summary and histogram."""
    out = {}
    for name, values in columns.items():
        edges = stats.bin_edges(values)
        entry = {"bins": edges, "pool": {**stats.summarize(values), "hist": stats.histogram(values, edges)},
                 "strategies": {}}
        for s in strategies:
            v = values[s.mask]
            entry["strategies"][s.name] = {**stats.summarize(v), "hist": stats.histogram(v, edges)}
        out[name] = entry
    return out


def lengths(pool: "Pool", tokenizer=None, batch: int = 1024) -> dict[str, np.ndarray]:
    """Words (whitespace-separated) of instruction, input and output; tokens too when a tokenizer is given."""
    out = {}
    texts = {f: pool.frame[f].to_list() for f in ("instruction", "input", "output")}
    for f, t in texts.items():
        out[f"{f}_words"] = words(t).astype(np.float64)
    if tokenizer is not None:
        for f, t in texts.items():
            counts = []
            for s in range(0, len(t), batch):
                enc = tokenizer([x or "" for x in t[s:s + batch]], add_special_tokens=False)["input_ids"]
                counts.extend(len(ids) for ids in enc)
            out[f"{f}_tokens"] = np.asarray(counts, dtype=np.float64)
    return out


def mix(fields: dict[str, "pl.Series"], strategies: list["Strategy"]) -> dict[str, Any]:
    """Counts per value of each field, pool and strategies, the pool's :data:`MIX_TOP` values first."""
    out = {}
    for f, series in fields.items():
        vals = np.asarray(series.fill_null("(none)").to_list(), dtype=object)
        uniq, counts = np.unique(vals, return_counts=True)
        order = np.argsort(-counts, kind="stable")
        top = [str(u) for u in uniq[order][:MIX_TOP]]
        keyed = np.where(np.isin(vals, top), vals, "(other)")
        labels = top + (["(other)"] if len(uniq) > MIX_TOP else [])

        def count(mask):
            sub = keyed[mask]
            return {v: int((sub == v).sum()) for v in labels}

        out[f] = {"values": labels, "pool": count(np.ones(len(vals), dtype=bool)),
                  "strategies": {s.name: count(s.mask) for s in strategies}}
    return out


def agreement(columns: dict[str, np.ndarray], label_sets: list["LabelSet"],
              strategies: list["Strategy"]) -> dict[str, Any]:
    """Per label set: how each column ranks the labelled pool rows, and the label's mean in each selection.

    Binary labels get ROC AUC (0.5 = no better than chance, below 0.5 = ranks the wrong way
    round), graded ones Spearman's rho, each over the pool rows that have both a label and a value.
    """
    out = {}
    for ls in label_sets:
        known = ~np.isnan(ls.values)
        per_col = {}
        for name, values in columns.items():
            ok = known & np.isfinite(values)
            y, x = ls.values[ok], values[ok]
            if ls.kind == "binary":
                per_col[name] = {"auc": stats.roc_auc(x, y), "n": int(ok.sum()), "positives": int((y == 1).sum())}
            else:
                per_col[name] = {"spearman": stats.spearman(x, y), "n": int(ok.sum())}
        pool_mean = float(ls.values[known].mean()) if known.any() else None
        sel = {}
        for s in strategies:
            v = ls.values[s.mask & known]
            mean = float(v.mean()) if v.size else None
            sel[s.name] = {"mean": mean, "n": int(v.size),
                           "lift": (mean / pool_mean) if mean is not None and pool_mean else None}
        out[ls.name] = {**ls.describe(), "metric": "auc" if ls.kind == "binary" else "spearman",
                        "columns": per_col, "pool": {"mean": pool_mean, "n": int(known.sum())},
                        "strategies": sel}
    return out
