"""Helpers shared by scorer tests: the batch the engine hands a scorer, short real rows, a one-row reference loss."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl


def scorer_batch(rows) -> pl.DataFrame:
    """The frame the engine hands ``Scorer.score``, from dicts (``input`` optional) or (instruction, input, output)."""
    rows = [r if isinstance(r, dict) else dict(zip(("instruction", "input", "output"), r)) for r in rows]
    return pl.DataFrame({"id": [str(i) for i in range(len(rows))],
                         "instruction": [r["instruction"] for r in rows], "input": [r.get("input", "") for r in rows],
                         "output": [r["output"] for r in rows], "n_turns": [1] * len(rows)})


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


def answer_nll(model, prompt_ids, answer_ids) -> float:
    """One row, straight transformers: mean loss over the answer tokens (labels = -100 on the prompt)."""
    import torch

    ids = torch.tensor([list(prompt_ids) + list(answer_ids)])
    labels = ids.clone()
    labels[0, :len(prompt_ids)] = -100
    with torch.no_grad():
        return model(input_ids=ids, labels=labels).loss.item()
