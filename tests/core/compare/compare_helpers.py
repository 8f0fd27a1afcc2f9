"""A small pool and recipes over it for the `dqf compare` tests: rows whose lengths, categories and labels are known."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

CATEGORIES = ("qa", "code", "writing")


def pool_rows(n=60):
    """Rows whose output has ``i % 7 + 5`` words, so output length and the label below are known."""
    return [{"instruction": f"Explain topic number {i} in the {CATEGORIES[i % 3]} style.", "input": "",
             "output": " ".join(["word"] * (i % 7) + [f"answer{i}", "is", "here", "and", "complete"]),
             "category": CATEGORIES[i % 3]} for i in range(n)]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def write_pool(path: Path, rows) -> Path:
    return write(path, "".join(json.dumps(r) + "\n" for r in rows))


def top_recipe(pool: str, out: str = "top-run", name: str = "top", k: int = 12) -> str:
    return f"""
    name = "{name}"
    [input]
    path = "{pool}"
    [output]
    dir = "{out}"
    [[steps]]
    id = "quality"
    score = {{ plugin = "heuristic" }}
    [[steps]]
    id = "top"
    select = {{ plugin = "top-k", column = "output_words", k = {k} }}
    """


def random_recipe(pool: str, k: int = 12) -> str:
    return f"""
    name = "rand"
    seed = 3
    [input]
    path = "{pool}"
    [output]
    dir = "rand-run"
    [[steps]]
    id = "sample"
    select = {{ plugin = "random", k = {k} }}
    """


def embedder_arg(path) -> str:
    """--embedder for a tiny BERT folder: fast, and its vectors are as real as any for the coverage code."""
    return f'{{ plugin = "hf-encoder", model = "{path}", pooling = "mean", max_length = 32 }}'
