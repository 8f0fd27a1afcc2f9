"""`answer-end`: log p(end of turn | prompt, answer) equals a one-row computation on a tiny Llama; thresholds; a
recipe step drops the rows whose answer the model expects to go on."""

from __future__ import annotations

import json
import math

import polars as pl
import pytest
import torch

import dqf
from dqf.testing import build_plugin, scorer_batch


def one_row(model, tok, instruction, output, end_ids):
    msgs = [{"role": "user", "content": instruction}]
    prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    ids = tok(prompt, add_special_tokens=False)["input_ids"] + tok(output, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, -1].double(), -1)
    return float(torch.logsumexp(logp[end_ids], 0))


def test_end_logprob_is_the_models_probability_of_ending_there(llama, example_pool):
    path, model, tok = llama
    rows = [json.loads(line) for line in example_pool.read_text(encoding="utf-8").splitlines()[:12]]
    rows = [r for r in rows if not r["input"]][:6]
    cut = [dict(r, output=" ".join(r["output"].split()[:3])) for r in rows]
    scorer = build_plugin("scorer", "answer-end", model=str(path), device="cpu", batch_size=4, min_end_logprob=-6.0)
    out = scorer.score(scorer_batch([(r["instruction"], "", r["output"]) for r in rows + cut]))
    # the tiny template ends a turn with </s>, which is also eos: one end token
    assert scorer._ends == [tok.convert_tokens_to_ids("</s>")]
    want = [one_row(model, tok, r["instruction"], r["output"], scorer._ends) for r in rows + cut]
    got = out["end_logprob"].to_list()
    assert got == pytest.approx(want, abs=1e-4)
    assert out["end_ok"].to_list() == [w >= -6.0 for w in want]
    assert all(math.isfinite(g) and g <= 0 for g in got)


def test_a_recipe_step_drops_answers_the_model_expects_to_go_on(tmp_path, tiny_models, write_jsonl, write_recipe):
    write_jsonl([{"instruction": "Name a colour.", "input": "", "output": "Blue."},
                 {"instruction": "Explain rain.", "input": "", "output": "Water falls from"}])
    recipe = write_recipe(f'name = "end"\n[input]\npath = "pool.jsonl"\n[output]\ndir = "out"\n[[steps]]\nid = "end"\n'
                          f'score = {{ plugin = "answer-end", model = "{tiny_models["llama"]}", min_end_logprob = -1e9 }}\n'
                          f'where = "end_ok"\n')
    res = dqf.run(recipe)
    assert res.rows["end_logprob"].null_count() == 0 and res.selected.height == 2  # nothing is below -1e9
    with pytest.raises(dqf.RecipeError, match=r"steps\[0\]\.score\.min_end_logprob"):
        dqf.validate(write_recipe(recipe.read_text().replace("-1e9", "0.5"), name="bad.toml"))
