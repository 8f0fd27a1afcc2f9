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


def test_deita_embedding_is_the_last_token_state_of_the_vicuna_conversation(tiny_models, example_pool):
    """deita/selection/embedder (CLM_Embedder, conv_template vicuna_v1.1): right-padded batch, final layer's hidden
    state at the last real token."""
    path = tiny_models["llama"]
    model, tok = AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    rows = [json.loads(line) for line in example_pool.read_text(encoding="utf-8").splitlines()[:10]]
    system = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
              "detailed, and polite answers to the user's questions.")
    texts = [system + " " + "USER: " + (f"{r['instruction']}\n{r['input']}" if r["input"] else r["instruction"]) + " "
             + "ASSISTANT: " + r["output"] + "</s>" for r in rows]  # get_prompt, ADD_COLON_TWO, one exchange
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    enc = tok(texts, return_tensors="pt", padding="longest", max_length=2048, truncation=True)
    with torch.no_grad():
        hs = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, output_hidden_states=True).hidden_states
    seq_len = enc.attention_mask.sum(1, keepdim=True)
    want = hs[-1][torch.arange(seq_len.size(0))[:, None], seq_len - 1].squeeze(1).numpy()

    emb = build_plugin("embedder", "hf-encoder", model=str(path), pooling="last", template="vicuna",
                       max_length=2048, device="cpu", batch_size=3)
    frame = pl.DataFrame({"instruction": [r["instruction"] for r in rows], "input": [r["input"] for r in rows],
                          "output": [r["output"] for r in rows]})
    assert emb.texts(frame) == texts
    np.testing.assert_allclose(emb.embed(emb.texts(frame)), want, rtol=1e-4, atol=1e-5)


def test_deita_repr_walk_is_the_iterative_filter():
    """deita/selection/filter/base.py IterativeFilter.filter (batch_size 1): score order, the first row kept, a row
    kept unless a kept row has cosine > threshold, stop at data_size."""
    from dqf.select import greedy_diverse

    rng = np.random.default_rng(0)
    X = (rng.normal(size=(300, 8)) + rng.normal(size=(1, 8))).astype(np.float32)  # anisotropic, as LM states are
    scores = rng.random(300)
    order = np.argsort(-scores, kind="stable")
    for tau, size in ((0.9, 40), (0.6, 40), (0.95, 300)):
        unit = X / np.linalg.norm(X, axis=1, keepdims=True)
        kept = [int(order[0])]
        for i in order[1:]:
            if not np.any(unit[kept] @ unit[i] > tau):
                kept.append(int(i))
            if len(kept) >= size:
                break
        got = greedy_diverse(X, order, tau, inclusive=True, limit=size)
        assert list(got) == kept[:size]
