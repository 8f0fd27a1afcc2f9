"""`ifd` scorer: both variants equal a one-row transformers loop on a tiny Llama; recipe, CLI listing, cache."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import dqf
from scorer_helpers import answer_nll, scorer_batch, short_pool_rows
from dqf_contrib.ifd.ifd import CHERRY_DIRECT_PREFIX, IfdScorer
from dqf.lm import ALPACA_PROMPT_INPUT, ALPACA_PROMPT_NO_INPUT


def pool_rows(example_pool, n=10, max_words=60):
    return short_pool_rows(example_pool, n, max_words)


frame = scorer_batch


reference_nll = answer_nll


def scorer(path, **opts):
    s = IfdScorer(IfdScorer.Options(model=str(path), **opts))
    s.setup()
    return s


def test_cherry_matches_one_row_loop(llama, example_pool):
    path, model, tok = llama
    rows = pool_rows(example_pool)
    s = scorer(path, batch_size=3)
    out = s.score(frame(rows))
    assert dict(out.schema) == s.columns()
    cond, direct = [], []
    for r in rows:
        a = tok(r["output"], add_special_tokens=False)["input_ids"]
        prompt = (ALPACA_PROMPT_INPUT if r["input"] else ALPACA_PROMPT_NO_INPUT).format(**r)
        cond.append(reference_nll(model, tok(prompt)["input_ids"], a))
        direct.append(reference_nll(model, tok("### Response:")["input_ids"], a))
    np.testing.assert_allclose(out["ifd_cond_loss"].to_numpy(), cond, atol=1e-4, rtol=0)
    np.testing.assert_allclose(out["ifd_direct_loss"].to_numpy(), direct, atol=1e-4, rtol=0)
    np.testing.assert_allclose(out["ifd"].to_numpy(), np.array(cond) / np.array(direct), rtol=1e-4)
    np.testing.assert_allclose(out["ifd"].to_numpy(), (out["ifd_cond_loss"] / out["ifd_direct_loss"]).to_numpy(),
                               rtol=1e-12)
    assert out["ifd_ge_1"].to_list() == [v >= 1 for v in out["ifd"].to_list()]
    assert out["ifd_too_long"].to_list() == [False] * len(rows)
    st = s.stats()
    assert st["rows_scored"] == len(rows) and st["too_long_rows"] == 0
    assert st["ifd_ge_1_rows"] == sum(out["ifd_ge_1"].to_list())


def test_superfiltering_matches_one_row_loop(llama, example_pool):
    path, model, tok = llama
    rows = pool_rows(example_pool, n=6)
    out = scorer(path, variant="superfiltering").score(frame(rows))
    cond, direct = [], []
    for r in rows:
        a = tok(r["output"], add_special_tokens=False)["input_ids"]
        prompt = f"{r['instruction']}\n{r['input']}\n" if r["input"] else f"{r['instruction']}\n"
        cond.append(reference_nll(model, tok(prompt)["input_ids"], a))
        direct.append(reference_nll(model, [], a))  # answer alone, no prefix: its first token is not scored
    np.testing.assert_allclose(out["ifd_cond_loss"].to_numpy(), cond, atol=1e-4, rtol=0)
    np.testing.assert_allclose(out["ifd_direct_loss"].to_numpy(), direct, atol=1e-4, rtol=0)
    # ratio of perplexities
    np.testing.assert_allclose(out["ifd"].to_numpy(), np.exp(cond) / np.exp(direct), rtol=1e-4)


def test_variant_prompts_differ_as_documented(llama):
    path, _, _ = llama
    cherry, superf = scorer(path), scorer(path, variant="superfiltering")
    assert cherry.prompts_for("Do it.", "") == (ALPACA_PROMPT_NO_INPUT.format(instruction="Do it."), "### Response:")
    assert cherry.prompts_for("Do it.", "x")[0] == ALPACA_PROMPT_INPUT.format(instruction="Do it.", input="x")
    assert CHERRY_DIRECT_PREFIX == "### Response:"
    assert superf.prompts_for("Do it.", "x") == ("Do it.\nx\n", None)
    assert superf.prompts_for("Do it.", "") == ("Do it.\n", None)
    assert cherry.cache_key() != superf.cache_key()


def test_too_long_rows_are_flagged_and_scored_on_the_kept_answer(llama, example_pool):
    path, model, tok = llama
    rows = pool_rows(example_pool, n=6) + [{"instruction": "word " * 60, "input": "", "output": "short answer"}]
    s = scorer(path, max_length=64)
    out = s.score(frame(rows))
    flags, cond = [], []
    for r in rows:
        a = tok(r["output"], add_special_tokens=False)["input_ids"]
        p = tok((ALPACA_PROMPT_INPUT if r["input"] else ALPACA_PROMPT_NO_INPUT).format(**r))["input_ids"]
        flags.append(len(p) + len(a) > 64)
        a = a[:max(64 - len(p), 0)]
        cond.append(reference_nll(model, p, a) if a else None)
    assert any(flags) and not all(flags)
    assert out["ifd_too_long"].to_list() == flags
    assert s.stats()["too_long_rows"] == sum(flags)
    got = out["ifd_cond_loss"].to_list()
    assert got[-1] is None and out["ifd"][-1] is None and out["ifd_ge_1"][-1] is None  # prompt alone fills it
    nan = float("nan")
    assert any(c is not None for c in cond[:-1])
    np.testing.assert_allclose([nan if g is None else g for g in got], [nan if c is None else c for c in cond],
                               atol=1e-4, rtol=0)


def test_recipe_where_ifd_below_one_and_cache(tmp_path, tiny_models, example_pool, write_jsonl, write_recipe):
    write_jsonl(pool_rows(example_pool, n=12))
    recipe = write_recipe(f"""
        name = "ifd"
        [input]
        path = "pool.jsonl"
        [output]
        dir = "out"
        [[steps]]
        id = "ifd"
        score = {{ plugin = "ifd", model = "{tiny_models['llama']}" }}
        where = "ifd < 1"
    """)
    res = dqf.run(recipe)
    rows = pl.read_parquet(tmp_path / "out" / "rows.parquet")
    step = res.manifest["steps"][0]
    assert step["cache"] == {"hits": 0, "computed": 12}
    want = [v is not None and v < 1 for v in rows["ifd"].to_list()]
    assert rows["selected"].to_list() == want and 0 < sum(want) < 12
    shutil.rmtree(tmp_path / "out")
    again = dqf.run(recipe)
    assert again.manifest["steps"][0]["cache"] == {"hits": 12, "computed": 0}
    assert pl.read_parquet(tmp_path / "out" / "rows.parquet")["ifd"].to_list() == rows["ifd"].to_list()


def test_cli_lists_both_plugins():
    exe = Path(sys.executable).with_name("dqf")
    proc = subprocess.run([str(exe), "plugins", "--json"], capture_output=True, text=True, env=os.environ.copy(),
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    by_name = {p["name"]: p for p in json.loads(proc.stdout)}
    for name, module in (("ifd", "dqf_contrib.ifd.ifd"), ("perplexity", "dqf_contrib.perplexity.perplexity")):
        p = by_name[name]
        assert p["kind"] == "scorer" and p["module"] == module and p["distribution"] == "dqf"
        assert "model" in p["options_schema"]["required"]
    assert {"variant", "max_length", "batch_size"} <= set(by_name["ifd"]["options_schema"]["properties"])
    assert {"template", "column_prefix"} <= set(by_name["perplexity"]["options_schema"]["properties"])
