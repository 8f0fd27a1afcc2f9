"""`deita-complexity` / `deita-quality`: batched expected scores equal a one-row computation on a tiny Llama."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from dqf_contrib.deita.complexity import COMPLEXITY_PROMPT, DeitaComplexityScorer
from dqf_contrib.deita.quality import QUALITY_PROMPT, DeitaQualityScorer


@pytest.fixture(scope="module")
def llama(tiny_models):
    path = tiny_models["llama"]
    return path, AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def rows(example_pool, n=7):
    out = []
    for line in example_pool.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if len((r["instruction"] + " " + r["input"] + " " + r["output"]).split()) <= 60:
            out.append(r)
        if len(out) == n:
            return out


def frame(rs, n_turns=1):
    return pl.DataFrame({"id": [str(i) for i in range(len(rs))], "instruction": [r["instruction"] for r in rs],
                         "input": [r["input"] for r in rs], "output": [r["output"] for r in rs],
                         "n_turns": [n_turns] * len(rs)})


def reference(model, tok, text):
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1].double()
    digits = [tok.convert_tokens_to_ids(str(i)) for i in range(1, 7)]
    return float((torch.softmax(logits[digits], 0) * torch.arange(1, 7)).sum())


def q(r):
    return f"{r['instruction']}\n{r['input']}" if r["input"] else r["instruction"]


@pytest.mark.parametrize("cls", [DeitaComplexityScorer, DeitaQualityScorer])
def test_matches_one_row_reference(llama, example_pool, cls):
    path, model, tok = llama
    rs = rows(example_pool)
    s = cls(cls.Options(model=str(path), batch_size=3))
    s.setup()
    got = s.score(frame(rs))[s.default_column].to_numpy()
    if cls is DeitaComplexityScorer:
        want = [reference(model, tok, COMPLEXITY_PROMPT.format(instruction=q(r))) for r in rs]
    else:
        want = [reference(model, tok, QUALITY_PROMPT.format(instruction=q(r), output=r["output"])) for r in rs]
    assert np.all((got >= 1) & (got <= 6))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert list(cls(cls.Options(model=str(path))).columns()) == [s.default_column]


def test_long_and_multi_turn_rows(llama, example_pool):
    path, _, _ = llama
    s = DeitaQualityScorer(DeitaQualityScorer.Options(model=str(path), max_length=60, column="dq"))
    s.setup()
    long = {"instruction": "explain the answer", "input": "", "output": "word " * 200}
    out = s.score(frame([long, rows(example_pool, 1)[0]], n_turns=2))
    assert out.columns == ["dq"] and out["dq"].null_count() == 0
    st = s.stats()
    assert st["truncated_rows"] >= 1 and st["first_turn_only_rows"] == 2
