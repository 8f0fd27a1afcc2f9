"""dqf.lm.ModelScorer owns a model scorer's loop: load once, empty batches, counters, errors naming the plugin."""

from __future__ import annotations

import polars as pl
import pytest

from dqf import DqfError
from dqf.lm import CausalLMScorer
from dqf.testing import scorer_batch


class LengthScorer(CausalLMScorer):
    """Prompt tokens per row: the smallest scorer that needs the model's tokenizer."""

    name = "length-test"
    loads = 0

    def loaded(self):
        type(self).loads += 1

    def columns(self):
        return {"tokens": pl.Int64}

    def score_batch(self, batch):
        return pl.DataFrame({"tokens": [len(self.tokenizer(t)["input_ids"]) for t in batch["instruction"]]},
                            schema=self.columns())


def test_model_scorer_loads_once_counts_rows_and_answers_empty_batches(tiny_models):
    s = LengthScorer(LengthScorer.Options(model=str(tiny_models["llama"]), max_length=10_000))
    assert s.stats() == {}  # nothing loaded yet
    empty = s.score(scorer_batch([]))
    assert empty.height == 0 and empty.schema == {"tokens": pl.Int64}
    out = s.score(scorer_batch([("say hi", "", "hi"), ("say something longer", "", "ok")]))
    s.score(scorer_batch([("again", "", "x")]))
    assert out["tokens"].to_list()[0] < out["tokens"].to_list()[1]
    assert LengthScorer.loads == 1
    # the tiny Llama has 256 positions: max_length is capped by them
    assert s.stats() == {"rows_scored": 3, "truncated_rows": 0, "max_length": 256}


def test_a_model_that_fails_to_load_names_the_plugin(tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    (tmp_path / "broken" / "model.safetensors").write_bytes(b"x")
    s = LengthScorer(LengthScorer.Options(model=str(tmp_path / "broken")))
    with pytest.raises(DqfError, match=r"^length-test: cannot load model") as info:
        s.score(scorer_batch([("a", "", "b")]))
    assert "\n" not in str(info.value) and s.model is None
