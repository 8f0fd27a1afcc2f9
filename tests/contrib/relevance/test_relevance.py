"""`relevance` scorer: the cosine of question and answer embeddings separates real Alpaca pairs from swapped ones;
values equal a direct computation; the overlap column; the reason."""

from __future__ import annotations

import json
import random

import numpy as np
import polars as pl

from dqf.testing import build_plugin


def test_true_pairs_score_above_swapped_ones(example_pool, tiny_models):
    rows = [json.loads(line) for line in example_pool.read_text(encoding="utf-8").splitlines()[:120]]
    rng = random.Random(0)
    others = [r["output"] for r in rows[60:]]
    rng.shuffle(others)
    pairs = [(r["instruction"], r["input"], r["output"]) for r in rows[:60]] + \
            [(r["instruction"], r["input"], o) for r, o in zip(rows[:60], others)]
    batch = pl.DataFrame({"instruction": [p[0] for p in pairs], "input": [p[1] for p in pairs],
                          "output": [p[2] for p in pairs]})
    scorer = build_plugin("scorer", "relevance")
    out = scorer.score(batch)
    rel = out["relevance"].to_numpy()
    true, swapped = rel[:60], rel[60:]
    auc = np.mean([t > s for t in true for s in swapped])
    assert auc > 0.9, auc
    # the cosine is the embedder's, one text at a time
    emb = scorer.nested["embedder"]
    q = [f"{i}\n{x}" if x else i for i, x, _ in pairs[:3]]
    a, b = emb.embed(q), emb.embed([p[2] for p in pairs[:3]])
    want = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    np.testing.assert_allclose(rel[:3], want, atol=1e-5)
    assert out["relevance_ok"].to_list() == [bool(v >= 0.05) for v in rel]
    assert all(r == f"relevance: cosine {v:.2f} < 0.05" for r, v in zip(out["relevance_reason"], rel) if r is not None)


def test_overlap_is_the_share_of_question_words_the_answer_uses(tiny_models):
    scorer = build_plugin("scorer", "relevance", embedder={"plugin": "hf-encoder", "model": str(tiny_models["bert"]),
                                                            "pooling": "mean"})
    out = scorer.score(pl.DataFrame({"instruction": ["Name three primary colors"], "input": [""],
                                     "output": ["The primary colors are red, blue and yellow."]}))
    # question words of 3+ letters: name, three, primary, colors; the answer uses primary and colors
    assert out["relevance_overlap"][0] == 0.5
