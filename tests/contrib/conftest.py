"""Fixtures shared by the contrib scorer tests: the tiny causal LM loaded as users load theirs."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def llama(tiny_models):
    """(path, model, tokenizer) of the tiny random Llama, through the same from_pretrained path the plugins use."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_models["llama"]
    return path, AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
