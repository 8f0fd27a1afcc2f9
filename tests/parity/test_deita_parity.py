"""DEITA parity: dqf's scorers compute what hkust-nlp/deita's `Llama_Scorer` computes (its prompts, transcribed here
as the oracle, and its expected score: softmax over the six digit tokens of the first answer position, weighted by
1..6), on a tiny Llama loaded through from_pretrained."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from dqf.testing import build_plugin

# deita/selection/scorer/llama_scorer.py (complexity_template, quality_template), character for character
REFERENCE_COMPLEXITY = ("You are a helpful assistant. Please identify the complexity score of the following user "
                        "query. \n##Query: {instruction}  \n##Complexity: ")
REFERENCE_QUALITY = ("You are a helpful assistant. Please identify the quality score of the Response corresponding "
                     "to the Question. \n #Question#:\n{instruction}\n#Response#:\n{output} \n##Quality: ")


def _oracle(model, tok, text: str) -> float:
    """The reference's score of one prompt: encode, first generated position's logits, six digits."""
    ids = torch.tensor([tok.encode(text)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1].double()
    digits = [tok.convert_tokens_to_ids(str(d)) for d in range(1, 7)]
    return float((torch.softmax(logits[digits], 0) * torch.arange(1, 7, dtype=torch.float64)).sum())


def test_deita_prompts_and_expected_scores_are_the_references(tiny_models, example_pool):
    path = tiny_models["llama"]
    model, tok = AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    rows = [json.loads(line) for line in example_pool.read_text(encoding="utf-8").splitlines()[:40]]
    rows = [r for r in rows if not r["input"] and len((r["instruction"] + r["output"]).split()) < 60][:8]
    batch = pl.DataFrame({"id": [str(i) for i in range(len(rows))], "instruction": [r["instruction"] for r in rows],
                          "input": [""] * len(rows), "output": [r["output"] for r in rows], "n_turns": [1] * len(rows)})
    for plugin, template, column in (("deita-complexity", REFERENCE_COMPLEXITY, "deita_complexity"),
                                     ("deita-quality", REFERENCE_QUALITY, "deita_quality")):
        scorer = build_plugin("scorer", plugin, model=str(path), device="cpu", batch_size=3)
        assert scorer.options.prompt == template  # the default prompt is the reference's, byte for byte
        got = scorer.score(batch)[column].to_numpy()
        want = [_oracle(model, tok, template.format(instruction=r["instruction"], output=r["output"])) for r in rows]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
