"""The tests' tiny models: :class:`dqf.testing.TinyModels` over the example pool's words."""

from __future__ import annotations

import json
from pathlib import Path

from dqf.testing import TinyModels

EXAMPLE_POOL = Path(__file__).resolve().parents[1] / "examples" / "data" / "alpaca_2k.jsonl"


def _pool_texts():
    for line in EXAMPLE_POOL.read_text(encoding="utf-8").splitlines()[:800]:
        yield from json.loads(line).values()


MODELS = TinyModels(texts=_pool_texts())
save_tokenizer = MODELS.tokenizer
tiny_deberta_classifier = MODELS.deberta_classifier
tiny_bert = MODELS.bert
tiny_llama = MODELS.llama
tiny_reward_model = MODELS.reward_model
