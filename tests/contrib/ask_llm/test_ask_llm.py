"""`ask-llm` scorer: batched, left-padded p(yes) equals a one-row computation from the model's logits."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch

import dqf
from scorer_helpers import scorer_batch
from dqf_contrib.ask_llm.ask_llm import ASK_LLM_PROMPT, AskLlmScorer


def pool_rows(example_pool, n=8, max_words=60):
    rows = []
    for line in example_pool.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if len((r["instruction"] + " " + r["input"] + " " + r["output"]).split()) <= max_words:
            rows.append(r)
        if len(rows) == n:
            break
    return rows


frame = scorer_batch


def reference(model, tok, text):
    """One row, no padding: softmax over the yes/no token logits at the first answer position."""
    ids = torch.tensor([tok(text, add_special_tokens=True)["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1]
    yes = [tok.convert_tokens_to_ids(t) for t in ("true",)]
    no = [tok.convert_tokens_to_ids(t) for t in ("no",)]
    assert tok.unk_token_id not in yes + no
    lp = torch.log_softmax(logits.double(), -1)
    y, n = torch.logsumexp(lp[yes], 0), torch.logsumexp(lp[no], 0)
    return torch.sigmoid(y - n).item()


def test_matches_one_row_reference(llama, example_pool):
    path, model, tok = llama
    rows = pool_rows(example_pool)
    with pytest.raises(dqf.DqfError, match="no single token"):  # the tiny vocabulary has no "yes"
        AskLlmScorer(AskLlmScorer.Options(model=str(path))).setup()
    s = AskLlmScorer(AskLlmScorer.Options(model=str(path), batch_size=3, yes_words=["true", " true"]))
    s.setup()
    got = s.score(frame(rows))["ask_llm"].to_numpy()
    parts = lambda r: "\n\n".join(p for p in (r["instruction"], r["input"], r["output"]) if p)  # noqa: E731
    want = np.array([reference(model, tok, ASK_LLM_PROMPT.format(example=parts(r))) for r in rows])
    assert got.shape == (len(rows),)
    assert np.all((got > 0) & (got < 1))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert s.stats()["truncated_rows"] == 0


def test_custom_prompt_long_rows_and_recipe(llama, example_pool, write_jsonl, write_recipe, tmp_path):
    path, model, tok = llama
    with pytest.raises(ValueError, match="placeholder"):
        AskLlmScorer.Options(model=str(path), prompt="no placeholder")
    s = AskLlmScorer(AskLlmScorer.Options(model=str(path), prompt="{example}\nis this good ? true or no :",
                                          max_length=40, yes_words=["true"]))
    s.setup()
    long = {"instruction": "explain " * 80, "input": "", "output": "the answer is here"}
    out = s.score(frame([long, pool_rows(example_pool, 1)[0]]))["ask_llm"].to_numpy()
    assert np.all((out > 0) & (out < 1)) and s.stats()["truncated_rows"] == 1
    rows = pool_rows(example_pool, 6)
    data = write_jsonl([{k: r[k] for k in ("instruction", "input", "output")} for r in rows])
    recipe = write_recipe(f"""
        name = "ask"
        [input]
        path = "{data}"
        format = "alpaca"
        [output]
        dir = "{tmp_path / 'out'}"
        [[steps]]
        id = "ask"
        score = {{ plugin = "ask-llm", model = "{path}", yes_words = ["true"] }}
        where = "ask_llm >= 0.0"
        """)
    dqf.run(recipe)
    kept = pl.read_ndjson(next((tmp_path / "out").rglob("*.jsonl")))
    assert kept.height == 6
