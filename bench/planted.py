"""Benchmark: how many planted defects dqf's quality signals catch, and how many clean rows they drop.

Usage: python bench/planted.py [--clean N] [--per-kind N] [--no-full] [--models [--model-clean N]]

Builds a pool from the shared data: N clean Alpaca rows (alpaca_52k rows 0..N) plus --per-kind
planted rows of each of ten defect kinds, each made from other Alpaca rows (rows 10,000 on) — empty,
whitespace-only, refusal, copied instruction, repeated words, non-linguistic junk (symbol/digit
strings, base64, mojibake), truncated after a few words, an answer in another language (from the
shared Chinese pool), web/markdown boilerplate, and an answer that belongs to another instruction.
Prints, per kind, the share each check catches, the clean rows dropped (and which checks dropped
them), then the drop rate on the whole 52k Alpaca and on Dolly 15k with the defaults, and the speed of
the lexical checks. Targets (issue 14): >= 90% of each kind caught with <= 1% of clean rows dropped;
<= 1% of Alpaca and Dolly dropped; >= 20,000 rows/s for the lexical checks on 2 cores.

--models adds the checks that need a model, each timed: `language` (fastText lid.176) and `relevance`
(MiniLM cosine) on the whole pool, `answer-end` (SmolLM2-135M-Instruct) on the planted rows and the first
--model-clean clean rows, and the table of all checks together on those rows.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import time
from collections import Counter
from pathlib import Path

import polars as pl

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
KINDS = ("empty", "whitespace", "refusal", "copied", "repeated", "junk", "truncated", "language", "boilerplate",
         "swapped")
REFUSALS = ("I'm sorry, but I cannot help with that request.", "As an AI language model, I cannot {x}",
            "I apologize, but I am unable to {x}", "I'm just an AI, I don't have personal opinions on this.",
            "I cannot fulfill this request. {x}")
BOILERPLATE = (
    "This website uses cookies to ensure you get the best experience on our website. Accept all cookies. {x}",
    "404 Not Found. The page you are looking for does not exist or has been moved.",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore. {x}",
    "<script type=\"text/javascript\">var x = document.getElementById('main');</script> {x}",
    "Home | About Us | Contact | Privacy Policy | Terms of Service\n{x}",
    "Please enable JavaScript in your browser to view this page. {x}",
    "<div class=\"content\"><p>{x}</p></div>",
    "[Home](/) [Blog](/blog) [Shop](/shop) [Login](/login)\n{x}",
)


def alpaca() -> list[dict]:
    return json.loads((SHARED / "alpaca_52k" / "alpaca_data.json").read_text(encoding="utf-8"))


def dolly() -> list[dict]:
    path = SHARED / "dolly_15k" / "databricks-dolly-15k.jsonl"
    return [{"instruction": r["instruction"], "input": r.get("context", ""), "output": r["response"]}
            for r in map(json.loads, path.read_text(encoding="utf-8").splitlines())]


def chinese() -> list[str]:
    out = []
    for f in sorted((SHARED / "chinese_pools").glob("alpaca_zh*.json")):
        out += [r["output"] for r in json.loads(f.read_text(encoding="utf-8")) if len(r["output"]) > 20]
    # the translated pool keeps some answers in English: the planted answers are the Chinese ones
    return [o for o in out if sum("\u4e00" <= ch <= "\u9fff" for ch in o) >= len(o) / 3]


def junk(rng: random.Random, source: str) -> str:
    kind = rng.randrange(3)
    if kind == 0:  # symbol and digit strings
        return "".join(rng.choice("0123456789#$%&*+-=/<>[]{}|~^_.:;") for _ in range(rng.randint(20, 120)))
    if kind == 1:  # a base64 blob
        return base64.b64encode(source.encode() + bytes(rng.randrange(256) for _ in range(40))).decode()
    return source.encode("utf-8").decode("latin-1", errors="replace").replace("\x00", "") + " Ã©Ã¨â€™â€œ"  # mojibake


def planted(rows: list[dict], per_kind: int, seed: int = 0) -> list[dict]:
    """``per_kind`` defective rows of each kind, made from ``rows`` (not in the clean set)."""
    rng = random.Random(seed)
    zh = chinese()
    long_rows = [r for r in rows if len(r["output"].split()) >= 20]
    out = []
    for kind in KINDS:
        for j in range(per_kind):
            r = dict(rng.choice(rows))
            other = rng.choice(rows)
            x = " ".join(other["output"].split()[:12])
            if kind == "empty":
                r["output"] = ""
            elif kind == "whitespace":
                r["output"] = rng.choice([" ", "\n\n", " \t \n", "   "])
            elif kind == "refusal":
                r["output"] = rng.choice(REFUSALS).format(x=x.lower())
            elif kind == "copied":
                r["output"] = r["instruction"] + rng.choice(["", "\n", " " + x])
            elif kind == "repeated":
                words = r["output"].split()[:rng.randint(2, 4)] or ["the", "answer"]
                r["output"] = " ".join(words * rng.randint(8, 20))
            elif kind == "junk":
                r["output"] = junk(rng, other["output"])
            elif kind == "truncated":
                r = dict(rng.choice(long_rows))
                r["output"] = " ".join(r["output"].split()[:rng.randint(3, 8)])
            elif kind == "language":
                r["output"] = rng.choice(zh)
            elif kind == "boilerplate":
                r["output"] = rng.choice(BOILERPLATE).format(x=x)
            elif kind == "swapped":
                r["output"] = other["output"]
            out.append({**r, "kind": kind})
    return out


def frame(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame({"id": [str(i) for i in range(len(rows))],
                         "instruction": [r["instruction"] for r in rows], "input": [r.get("input", "") for r in rows],
                         "output": [r["output"] for r in rows], "n_turns": [1] * len(rows),
                         "kind": [r.get("kind", "clean") for r in rows]})


def run_scorer(name: str, df: pl.DataFrame, **options) -> pl.DataFrame:
    from dqf.testing import build_plugin

    scorer = build_plugin("scorer", name, **options)
    scorer.setup()
    return pl.concat([scorer.score(b.drop("kind")) for b in df.iter_slices(scorer.batch_size)])


def heuristic(df: pl.DataFrame) -> pl.DataFrame:
    return run_scorer("heuristic", df)


#: The checks that need a model: scorer, its pass column, and the rows it runs on ("all" or the subsample).
MODEL_CHECKS = (("language", "language_ok", "all"), ("relevance", "relevance_ok", "all"),
                ("answer-end", "end_ok", "sample"))


def model_checks(df: pl.DataFrame, base: pl.DataFrame, sample_clean: int) -> None:
    """Each model check's catch rate per kind and its clean-row drop rate, then all checks together."""
    sample = df.with_row_index("_pos").filter((pl.col("kind") != "clean") | (pl.col("_pos") < sample_clean))
    passed = {"heuristic": base["heuristic_ok"]}
    print(f"\n{'check':<12}{'rows':>7}{'rows/s':>9}  " + " ".join(f"{k[:8]:>8}" for k in (*KINDS, "clean")))
    for name, col, where in MODEL_CHECKS:
        rows = df if where == "all" else sample.drop("_pos")
        t = time.perf_counter()
        out = run_scorer(name, rows)
        dt = time.perf_counter() - t
        res = pl.concat([rows.select("kind"), out], how="horizontal")
        rates = [(~res.filter(pl.col("kind") == k)[col].fill_null(True)).mean() for k in (*KINDS, "clean")]
        print(f"{name:<12}{rows.height:>7}{rows.height / dt:>9,.1f}  " + " ".join(f"{r:>8.1%}" for r in rates))
        passed[name] = out[col].fill_null(True) if where == "all" else out[col].fill_null(True)
    # all checks on the subsample
    idx = sample["_pos"]
    ok = base["heuristic_ok"].gather(idx)
    for name, col, where in MODEL_CHECKS:
        ok = ok & (passed[name].gather(idx) if where == "all" else passed[name])
    kinds = sample["kind"]
    rates = [(~ok.filter(kinds == k)).mean() for k in (*KINDS, "clean")]
    print(f"{'all checks':<12}{sample.height:>7}{'':>9}  " + " ".join(f"{r:>8.1%}" for r in rates))
    # the clean rows all checks drop: those the release itself left without an answer, and the rest
    reasons = base["heuristic_reason"].gather(idx).fill_null("")
    dropped = ~ok & (kinds == "clean")
    defects = dropped & reasons.str.contains("output_empty|output_placeholder")
    n_clean = (kinds == "clean").sum()
    print(f"clean rows dropped by all checks: {dropped.sum()} of {n_clean} ({dropped.sum() / n_clean:.2%}): "
          f"{defects.sum()} empty or placeholder answers in the release, {dropped.sum() - defects.sum()} others "
          f"({(dropped.sum() - defects.sum()) / n_clean:.2%})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clean", type=int, default=2000)
    ap.add_argument("--per-kind", type=int, default=30)
    ap.add_argument("--no-full", action="store_true", help="skip the whole-pool drop rates (52k Alpaca, Dolly)")
    ap.add_argument("--models", action="store_true", help="also the checks that need a model (see above)")
    ap.add_argument("--model-clean", type=int, default=2000, help="clean rows answer-end runs on")
    args = ap.parse_args()
    pool = alpaca()
    rows = pool[:args.clean] + planted(pool[10_000:], args.per_kind)
    df = frame(rows)
    t = time.perf_counter()
    scored = heuristic(df)
    dt = time.perf_counter() - t
    res = pl.concat([df.select("kind"), scored], how="horizontal")
    print(f"pool: {args.clean:,} clean Alpaca rows + {args.per_kind} planted rows x {len(KINDS)} kinds")
    print(f"{'kind':<12}{'rows':>6}{'caught':>9}  by")
    for kind in KINDS:
        part = res.filter(pl.col("kind") == kind)
        caught = (~part["heuristic_ok"]).mean()
        fired = Counter(r for r in part["heuristic_reason"].drop_nulls().str.extract(r"^heuristic: (\w+)").to_list()) \
            if "heuristic_reason" in part.columns else Counter()
        print(f"{kind:<12}{part.height:>6}{caught:>9.0%}  {dict(fired.most_common(3))}")
    clean = res.filter(pl.col("kind") == "clean")
    dropped = clean.filter(~pl.col("heuristic_ok"))
    print(f"{'clean':<12}{clean.height:>6}{dropped.height / clean.height:>9.2%}  dropped (target <= 1%)")
    if "heuristic_reason" in dropped.columns:
        for reason in dropped["heuristic_reason"].head(8).to_list():
            print(f"    {reason}")
    print(f"lexical checks: {df.height / dt:,.0f} rows/s on this pool (first call, includes setup)")
    if args.models:
        model_checks(df, scored, args.model_clean)
    if args.no_full:
        return
    for name, data in (("alpaca_52k", pool), ("dolly_15k", dolly())):
        d = frame(data)
        t = time.perf_counter()
        s = heuristic(d)
        dt = time.perf_counter() - t
        bad = s.filter(~pl.col("heuristic_ok"))
        why = Counter(bad["heuristic_reason"].str.extract(r"^heuristic: (\w+)").to_list()) \
            if "heuristic_reason" in bad.columns else Counter()
        print(f"{name}: {bad.height / d.height:.2%} of {d.height:,} dropped ({dict(why.most_common(6))}); "
              f"{d.height / dt:,.0f} rows/s")


if __name__ == "__main__":
    main()
