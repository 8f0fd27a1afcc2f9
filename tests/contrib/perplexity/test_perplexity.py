"""`perplexity` scorer: batched answer losses equal a one-row transformers loop, on a tiny Llama loaded from disk."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import torch

import dqf
import dqf.lm
from scorer_helpers import answer_nll, scorer_batch, short_pool_rows
from dqf.lm import ALPACA_PROMPT_INPUT, ALPACA_PROMPT_NO_INPUT
from dqf_contrib.perplexity.perplexity import PerplexityScorer


def pool_rows(example_pool, n=10, max_words=60):
    return short_pool_rows(example_pool, n, max_words)


frame = scorer_batch


reference_nll = answer_nll


def scorer(path, **opts):
    s = PerplexityScorer(PerplexityScorer.Options(model=str(path), **opts))
    s.setup()
    return s


def alpaca(r):
    return (ALPACA_PROMPT_INPUT if r["input"] else ALPACA_PROMPT_NO_INPUT).format(**r)


def test_alpaca_losses_match_one_row_loop(llama, example_pool):
    path, model, tok = llama
    rows = pool_rows(example_pool)
    s = scorer(path, batch_size=4)
    out = s.score(frame(rows))
    assert dict(out.schema) == s.columns() == {"ppl_nll": pl.Float64, "ppl": pl.Float64}
    want = [reference_nll(model, tok(alpaca(r))["input_ids"], tok(r["output"], add_special_tokens=False)["input_ids"])
            for r in rows]
    np.testing.assert_allclose(out["ppl_nll"].to_numpy(), want, atol=1e-4, rtol=0)
    np.testing.assert_allclose(out["ppl"].to_numpy(), np.exp(out["ppl_nll"].to_numpy()), rtol=1e-12)
    assert s.stats() == {"rows_scored": len(rows), "truncated_rows": 0, "max_length": 256}  # capped by the model
    # batch size is speed only: same numbers one row at a time, and it is left out of the cache key
    one = scorer(path, batch_size=1).score(frame(rows))
    np.testing.assert_allclose(one["ppl_nll"].to_numpy(), out["ppl_nll"].to_numpy(), atol=1e-5)
    assert s.cache_key() == scorer(path, batch_size=1).cache_key()


def test_plain_and_chat_templates(llama, example_pool):
    path, model, tok = llama
    rows = pool_rows(example_pool, n=4)
    plain = scorer(path, template="plain", column_prefix="p").score(frame(rows))
    assert plain.columns == ["p_nll", "p"]
    want = [reference_nll(model, tok(f"{r['instruction']}\n{r['input']}\n" if r["input"] else f"{r['instruction']}\n")
                          ["input_ids"], tok(r["output"], add_special_tokens=False)["input_ids"]) for r in rows]
    np.testing.assert_allclose(plain["p_nll"].to_numpy(), want, atol=1e-4, rtol=0)
    chat = scorer(path, template="chat").score(frame(rows))
    want = []
    for r in rows:
        msgs = [{"role": "user", "content": f"{r['instruction']}\n{r['input']}" if r["input"] else r["instruction"]}]
        prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        full = tok.apply_chat_template(msgs + [{"role": "assistant", "content": r["output"]}], tokenize=False)
        want.append(reference_nll(model, tok(prompt, add_special_tokens=False)["input_ids"],
                                  tok(full[len(prompt):], add_special_tokens=False)["input_ids"]))
    np.testing.assert_allclose(chat["ppl_nll"].to_numpy(), want, atol=1e-4, rtol=0)
    assert not np.allclose(chat["ppl_nll"].to_numpy(), plain["p_nll"].to_numpy())


@pytest.mark.parametrize("truncation,limit", [("end", 60), ("prompt_start", 40)])
def test_too_long_rows_lose_the_end_of_the_answer_or_the_start_of_the_prompt(llama, example_pool, truncation, limit):
    """`end` (the default) is the references' tokenizer truncation; `prompt_start` keeps the whole answer."""
    path, model, tok = llama
    rows = pool_rows(example_pool, n=6)
    s = scorer(path, max_length=limit, **({} if truncation == "end" else {"truncation": truncation}))
    out = s.score(frame(rows))
    want, cut = [], 0
    for r in rows:
        p, a = tok(alpaca(r))["input_ids"], tok(r["output"], add_special_tokens=False)["input_ids"]
        if len(p) + len(a) > limit:
            cut += 1
            if truncation == "end":
                whole = (p + a)[:limit]
                p, a = whole[:min(len(p), limit)], whole[min(len(p), limit):]
            else:
                a = a[:limit]
                p = p[len(p) - (limit - len(a)):] if len(a) < limit else []
        want.append(reference_nll(model, p, a) if a else math.nan)
    assert cut > 0 and s.stats()["truncated_rows"] == cut and not all(math.isnan(w) for w in want)
    np.testing.assert_allclose(out["ppl_nll"].to_numpy(), want, atol=1e-4, rtol=0)


def test_answer_losses_edge_cases(llama):
    _, model, tok = llama
    got = dqf.lm.answer_losses(model, tok, [[10, 11], [], [], [12]], [[], [13], [13, 14, 15], [16, 17]], batch_size=8,
                            device=torch.device("cpu"))
    assert math.isnan(got[0]) and math.isnan(got[1])  # nothing to score: no answer, or one token with no context
    assert got[2] == pytest.approx(reference_nll(model, [], [13, 14, 15]), abs=1e-5)
    assert got[3] == pytest.approx(reference_nll(model, [12], [16, 17]), abs=1e-5)
    assert "answer_losses" in dqf.lm.__all__


def test_empty_batch_and_empty_output(llama):
    path, _, _ = llama
    s = scorer(path)
    assert s.score(frame([])).height == 0
    out = s.score(frame([{"instruction": "say nothing", "input": "", "output": ""}]))
    assert out["ppl_nll"].to_list() == [None] and out["ppl"].to_list() == [None]
