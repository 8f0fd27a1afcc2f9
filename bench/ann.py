"""Benchmark: the ANN-based contrib plugins (knn-distance, dedup, deita-repr) at 100k rows, HNSW against exact.

Usage: python bench/ann.py [--n 100000] [--d 384] [--subset 10000] [--k 10] [--deita-k 10000,50000]
                           [--dup-fraction 0.05] [--markdown]

Times the routines the plugins call (``dqf_contrib._ann``), on synthetic embeddings shaped like
sentence-embedding output: clustered, unit-norm float32 rows (the generator of bench/kcenter.py),
with ``--dup-fraction`` of them replaced by near copies of other rows (cosine ~0.99) so dedup and
deita-repr have something to drop.

- knn-distance: ``knn_search(X, k)`` with the plugin's defaults (HNSW from 20k rows). Exact: the
  plugin's chunked brute force (``X[rows] @ X.T``, partial sort) for ``--subset`` query rows against
  all n rows, scaled by n / subset (its cost is linear in the query rows); the same rows give HNSW's
  recall@k.
- dedup: ``greedy_diverse(X, input order, 0.95, inclusive=False)`` (HNSW from 20k rows). Exact: the
  plugin's exact path (a matrix of the kept rows) on the first ``--subset`` rows, scaled by
  (n / subset)^2 (each row is checked against every kept row); agreement: HNSW forced on the same
  subset against exact.
- deita-repr: ``greedy_diverse(X, by score, 0.9, inclusive=True, limit=k)`` for each k of
  ``--deita-k``, both HNSW and exact run on all n rows (the walk stops after k picks, so exact is
  feasible), and the picks compared.

Every routine is single-threaded where the plugin makes it so (hnswlib with num_threads=1); the
exact matrix products use numpy's BLAS threads. Timings are one run each.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time
from pathlib import Path

import numpy as np
import polars as pl

from dqf.select import greedy_diverse, knn_search, order_by_score
from dqf.select.ann import CHUNK


def _kcenter_bench():
    spec = importlib.util.spec_from_file_location("_bench_kcenter", Path(__file__).with_name("kcenter.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def embeddings(n: int, d: int, dup_fraction: float, seed: int = 0) -> np.ndarray:
    """bench/kcenter.py's clustered unit-norm rows, with a fraction replaced by near copies of other rows."""
    X = _kcenter_bench().synthetic_embeddings(n, d, seed=seed)
    rng = np.random.default_rng(seed + 1)
    m = int(n * dup_fraction)
    if m:
        dup = rng.choice(n, size=m, replace=False)
        src = rng.integers(n, size=m)
        X[dup] = X[src] + 0.01 * rng.standard_normal((m, d), dtype=np.float32)
        X[dup] /= np.linalg.norm(X[dup], axis=1, keepdims=True)
    return X


def exact_knn_rows(X: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k nearest other rows (cosine) of ``X[rows]`` among all of X: the plugin's exact search, for some rows."""
    out = np.empty((rows.size, k), dtype=np.int64)
    for lo in range(0, rows.size, CHUNK):
        q = rows[lo:lo + CHUNK]
        D = 1.0 - (X[q] @ X.T).astype(np.float64)
        D[np.arange(q.size), q] = np.inf
        part = np.argpartition(D, k - 1, axis=1)[:, :k]
        d = np.take_along_axis(D, part, axis=1)
        out[lo:lo + q.size] = np.take_along_axis(part, np.lexsort((part, d), axis=1), axis=1)
    return out


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--subset", type=int, default=10_000, help="rows for the extrapolated exact runs")
    ap.add_argument("--k", type=int, default=10, help="knn-distance neighbours")
    ap.add_argument("--deita-k", default="10000,50000", help="deita-repr budgets (comma-separated)")
    ap.add_argument("--dup-fraction", type=float, default=0.05)
    ap.add_argument("--only", default="knn-distance,dedup,deita-repr", help="plugins to time (comma-separated)")
    ap.add_argument("--markdown", action="store_true", help="print the table as markdown")
    args = ap.parse_args()
    n, sub = args.n, min(args.subset, args.n)

    load0 = os.getloadavg()
    X, secs = timed(lambda: embeddings(n, args.d, args.dup_fraction))
    print(f"cores: {os.cpu_count()}, load average at start: {load0[0]:.1f}; data: n={n:,}, d={args.d}, "
          f"{args.dup_fraction:.0%} near duplicates, built in {secs:.1f} s", flush=True)
    table = []  # plugin, routine, dqf s, exact s, exact how, speed-up, check
    only = set(args.only.split(","))

    if "knn-distance" in only:
        knn(X, args, n, sub, table)
    if "dedup" in only:
        dedup(X, n, sub, table)
    if "deita-repr" in only:
        deita(X, args, n, table)

    load1 = os.getloadavg()
    print(f"load average at end: {load1[0]:.1f}\n")
    if args.markdown:
        print(f"| plugin | routine ({n:,} rows, d = {args.d}) | dqf s (HNSW from 20k rows) | exact s | exact measured as | "
              f"speed-up | check |")
        print("|---|---|---:|---:|---|---:|---|")
        for p, r, th, te, how, check in table:
            print(f"| `{p}` | {r} | {th:.1f} | {te:.1f} | {how} | {te / th:.1f}x | {check} |")
    else:
        for p, r, th, te, how, check in table:
            print(f"{p:<13} {r:<46} hnsw {th:8.1f} s   exact {te:8.1f} s   {te / th:6.1f}x   {check}\n"
                  f"{'':<13} exact: {how}")


def knn(X, args, n, sub, table):
    (idx, _), t_hnsw = timed(lambda: knn_search(X, args.k))
    rows = np.random.default_rng(2).choice(n, size=sub, replace=False)
    exact_idx, t_sub = timed(lambda: exact_knn_rows(X, rows, args.k))
    t_exact = t_sub * n / sub
    recall = np.mean([len(set(a) & set(b)) / args.k for a, b in zip(idx[rows], exact_idx)])
    table.append(("knn-distance", f"knn_search, k={args.k}", t_hnsw, t_exact,
                  f"{sub:,} query rows x all {n:,} in {t_sub:.1f} s, x{n / sub:g} (extrapolated)",
                  f"recall@{args.k} {recall:.3f} on those {sub:,} rows"))
    print("knn-distance done", flush=True)


def dedup(X, n, sub, table):
    kept, t_hnsw = timed(lambda: greedy_diverse(X, np.arange(n), 0.95, inclusive=False))
    Xs = X[:sub]
    kept_exact_sub, t_sub = timed(lambda: greedy_diverse(Xs, np.arange(sub), 0.95, inclusive=False,
                                                         exact_below=sub + 1))
    kept_hnsw_sub = greedy_diverse(Xs, np.arange(sub), 0.95, inclusive=False, exact_below=0)
    differ = len(set(kept_exact_sub) ^ set(kept_hnsw_sub))
    t_exact = t_sub * (n / sub) ** 2
    table.append(("dedup", "greedy_diverse, cosine >= 0.95, input order", t_hnsw, t_exact,
                  f"first {sub:,} rows in {t_sub:.1f} s, x{(n / sub) ** 2:g} (extrapolated, quadratic)",
                  f"{n - len(kept):,} dropped of {n:,}; on the {sub:,}-row subset HNSW and exact keep "
                  f"{'the same rows' if not differ else f'sets differing in {differ} rows'}"))
    print("dedup done", flush=True)


def deita(X, args, n, table):
    scores = np.random.default_rng(3).random(n)
    order = order_by_score(pl.DataFrame({"s": scores}), "s", True)
    for k in [int(x) for x in args.deita_k.split(",") if x]:
        picks, t_hnsw = timed(lambda: greedy_diverse(X, order, 0.9, inclusive=True, limit=k))
        picks_exact, t_exact = timed(lambda: greedy_diverse(X, order, 0.9, inclusive=True, limit=k,
                                                            exact_below=n + 1))
        agree = next((i for i, (a, b) in enumerate(zip(picks, picks_exact)) if a != b),
                     min(len(picks), len(picks_exact)))
        extra = len(set(picks) - set(picks_exact))
        check = "picks identical" if picks == picks_exact else (
            f"first {agree:,} picks identical; {extra:,} of HNSW's {len(picks):,} picks not in exact's")
        table.append(("deita-repr", f"greedy_diverse, tau = 0.9, k = {k:,}", t_hnsw, t_exact,
                      f"exact store of the taken rows, all {n:,} rows (measured)", check))
        print(f"deita-repr k={k} done", flush=True)


if __name__ == "__main__":
    main()
