"""Benchmark: the vectorised `heuristic` scorer against the same statistics computed row by row in Python.

Usage: python bench/heuristic.py [POOL] [--repeat N]
POOL defaults to ../shared/data/alpaca_52k/alpaca_data.json (the 52k Alpaca pool), falling
back to the shipped 2k sample. Target (issue 2): >= 20,000 rows/s on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import re
import time
from pathlib import Path

import polars as pl

from dqf.io.readers import read_input
from dqf_contrib.heuristic.heuristic import REFUSAL_PHRASES, HeuristicScorer

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_POOLS = [ROOT.parent / "shared/data/alpaca_52k/alpaca_data.json", ROOT / "examples/data/alpaca_2k.jsonl"]
_WORD = re.compile(r"\w+(?:'\w+)?")
_GARBLED = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffd\ue000-\uf8ff]")


def naive_row(instruction: str, inp: str, output: str, opts) -> dict:
    """The obvious per-row implementation, for comparison."""
    words = _WORD.findall(output.lower())
    tri = [" ".join(words[i:i + 3]) for i in range(len(words) - 2)]
    low = output.lower()
    instr = instruction.strip().lower()
    text = instruction + "\n" + inp + output
    row = {
        "instruction_words": len(instruction.split()),
        "instruction_chars": len(instruction),
        "output_words": len(output.split()),
        "output_chars": len(output),
        "output_ttr": len(set(words)) / len(words) if words else None,
        "output_repetition": 1 - len(set(tri)) / len(tri) if tri else 0.0,
        "output_empty": not output.strip(),
        "output_refusal": any(p in low for p in REFUSAL_PHRASES),
        "output_copies_instruction": len(instr) >= opts.min_copy_chars and instr in low,
        "garbled_ratio": len(_GARBLED.findall(text)) / max(len(text), 1),
    }
    row["heuristic_ok"] = (not row["output_empty"] and not row["output_refusal"]
                           and not row["output_copies_instruction"] and row["output_words"] >= opts.min_output_words
                           and row["output_repetition"] <= opts.max_repetition and row["garbled_ratio"] <= opts.max_garbled)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pool", nargs="?", type=Path)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    pool = args.pool or next(p for p in DEFAULT_POOLS if p.exists())
    frame = read_input(pool).frame.select("id", "instruction", "input", "output", "n_turns")
    n = frame.height
    scorer = HeuristicScorer()
    print(f"pool: {pool} ({n:,} rows), cores: {os.cpu_count()}, polars {pl.__version__}, batch {scorer.batch_size}")

    best = float("inf")
    for _ in range(args.repeat):
        t = time.perf_counter()
        fast = pl.concat([scorer.score(b) for b in frame.iter_slices(scorer.batch_size)])
        best = min(best, time.perf_counter() - t)

    t = time.perf_counter()
    slow = [naive_row(i, x, o, scorer.options) for i, x, o in zip(frame["instruction"], frame["input"], frame["output"])]
    naive = time.perf_counter() - t
    slow = pl.DataFrame(slow, schema_overrides={c: t for c, t in fast.schema.items() if c in slow[0]})

    agree = {c: float((fast[c] == slow[c]).mean()) if fast[c].dtype != pl.Float64
             else float(((fast[c] - slow[c]).abs() < 1e-9).fill_null(fast[c].is_null() & slow[c].is_null()).mean())
             for c in slow.columns}  # the naive version covers the first-round statistics
    print(f"{'implementation':<28}{'seconds':>10}{'rows/s':>14}")
    print(f"{'vectorised (dqf heuristic)':<28}{best:>10.3f}{n / best:>14,.0f}")
    print(f"{'naive per-row Python':<28}{naive:>10.3f}{n / naive:>14,.0f}")
    print(f"speed-up: {naive / best:.1f}x   target >= 20,000 rows/s: {'met' if n / best >= 20000 else 'NOT met'}")
    print("agreement with the naive version per column: "
          + ", ".join(f"{c} {v:.4f}" for c, v in agree.items()))
    print(f"heuristic_ok rate: {fast['heuristic_ok'].mean():.3f}, refusals: {int(fast['output_refusal'].sum())}, "
          f"copies: {int(fast['output_copies_instruction'].sum())}, empty: {int(fast['output_empty'].sum())}")


if __name__ == "__main__":
    main()
