"""`kcenter` selector in real recipes: same picks as dqf.select.kcenter_greedy, continuing from a seed step, validation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import dqf
import dqf.select
import dqf.registry
from dqf.store import Store
from dqf.io.rows import row_id

POOL = Path(__file__).resolve().parents[2] / "examples" / "data" / "alpaca_2k.jsonl"
N = 60


@pytest.fixture(scope="module")
def host():
    return dqf.registry.build_plugin_manager()


@pytest.fixture
def pool(write_jsonl):
    rows = [json.loads(line) for line in POOL.read_text(encoding="utf-8").splitlines()[:N]]
    write_jsonl(rows)
    return rows


def recipe(model, steps, seed=0, out="out", select=None):
    emb = f'{{ plugin = "hf-encoder", model = "{model}" }}'
    outputs = f"select = {json.dumps(select)}\n" if select else ""
    return (f'name = "kc"\nseed = {seed}\n[input]\npath = "pool.jsonl"\n[output]\ndir = "{out}"\n{outputs}'
            + steps.replace("EMB", emb))


def ordered_ids(res) -> list[str]:
    """Row ids in input order (the order the engine hands rows to a selector)."""
    return res.rows["id"].to_list()


def cached_vectors(host, model, texts, cache):
    """The vectors the run cached for ``texts``; asserts nothing had to be computed again."""
    info = host.get("embedder", "hf-encoder")
    emb = info.cls(info.cls.Options(model=str(model)))
    store = Store(cache).embeddings
    before = set(store.directory(emb).glob("*"))
    X = store.embed(emb, texts)
    assert before and set(store.directory(emb).glob("*")) == before
    return X


def picked(res, step):
    return set(res.rows.filter(pl.col(f"step_{step}") == "kept")["id"])


def first_by_seed(ids, seed):
    """The documented first centre: a seeded draw over the candidates sorted by id."""
    order = np.argsort(np.asarray(ids), kind="stable")
    return int(order[np.random.default_rng(seed).integers(len(ids))])


def test_picks_equal_kcenter_greedy(write_recipe, pool, tiny_models, host, isolated_cache):
    steps = '[[steps]]\nid = "div"\nselect = { plugin = "kcenter", k = 7, embedder = EMB }\n'
    res = dqf.run(write_recipe(recipe(tiny_models["bert"], steps, seed=5)))
    ids = ordered_ids(res)
    X = cached_vectors(host, tiny_models["bert"], [r["instruction"] for r in pool], isolated_cache)
    want = dqf.select.kcenter_greedy(X, 7, first=first_by_seed(ids, 5))
    assert picked(res, "div") == {ids[i] for i in want}
    assert set(res.selected["id"]) == {ids[i] for i in want}
    dropped = res.rows.filter(~pl.col("selected"))
    assert dropped.height == N - 7 and set(dropped["reason"]) == {"not picked by k-center (k=7)"}
    stats = res.manifest["steps"][0]["stats"]
    assert stats == {"candidates": N, "start_centres": 0, "picked": 7}


def test_first_option_and_seed(write_recipe, pool, tiny_models, host, isolated_cache):
    steps = '[[steps]]\nid = "div"\nselect = { plugin = "kcenter", fraction = 0.1, first = "FIRST", embedder = EMB }\n'
    ids = [row_id([r["instruction"], r["input"], r["output"]]) for r in pool]
    res = dqf.run(write_recipe(recipe(tiny_models["bert"], steps.replace("FIRST", ids[17]), out="o2"), "r2.toml"))
    X = cached_vectors(host, tiny_models["bert"], [r["instruction"] for r in pool], isolated_cache)
    want = dqf.select.kcenter_greedy(X, 6, first=17)
    assert want[0] == 17 and picked(res, "div") == {ids[i] for i in want}
    # the recipe seed draws the first centre; a different seed gives (here) a different set
    sets = []
    for seed in (1, 2):
        r = dqf.run(write_recipe(recipe(tiny_models["bert"], steps.replace(', first = "FIRST"', ""), seed=seed,
                                        out=f"s{seed}"), f"s{seed}.toml"))
        sets.append(picked(r, "div"))
        assert sets[-1] == {ids[i] for i in dqf.select.kcenter_greedy(X, 6, first=first_by_seed(ids, seed))}
    assert sets[0] != sets[1]
    with pytest.raises(dqf.DqfError, match="not a row id"):
        dqf.run(write_recipe(recipe(tiny_models["bert"], steps.replace("FIRST", "nope"), out="o3"), "r3.toml"))


def test_same_picks_whatever_the_input_order(write_recipe, write_jsonl, pool, tiny_models):
    steps = '[[steps]]\nid = "div"\nselect = { plugin = "kcenter", k = 5, embedder = EMB }\n'
    a = dqf.run(write_recipe(recipe(tiny_models["bert"], steps, seed=3, out="a"), "a.toml"))
    write_jsonl(list(reversed(pool)))
    b = dqf.run(write_recipe(recipe(tiny_models["bert"], steps, seed=3, out="b"), "b.toml"))
    assert ordered_ids(a) == ordered_ids(b)[::-1]
    assert picked(a, "div") == picked(b, "div")


SEEDED = """
[[steps]]
id = "seed"
select = { plugin = "kcenter", k = 4, embedder = EMB }
where = "input <> ''"

[[steps]]
id = "more"
from = "input"
select = { plugin = "kcenter", k = 6, start_from = "seed", embedder = EMB OPTS }
WHERE
"""


def seeded(model, opts="", where="", out="out"):
    return recipe(model, SEEDED.replace("OPTS", opts).replace("WHERE", where), out=out, select=["seed", "more"])


def test_start_from_continues_from_the_seed_centres(write_recipe, pool, tiny_models, host, isolated_cache):
    res = dqf.run(write_recipe(seeded(tiny_models["bert"])))
    ids = ordered_ids(res)
    seed_ids = picked(res, "seed")
    more_ids = picked(res, "more")
    assert len(seed_ids) == 4 and len(more_ids) == 6 and not seed_ids & more_ids
    assert set(res.selected["id"]) == seed_ids | more_ids
    X = cached_vectors(host, tiny_models["bert"], [r["instruction"] for r in pool], isolated_cache)
    seed_pos = [ids.index(i) for i in seed_ids]
    want = dqf.select.kcenter_greedy(X, 6, already_selected=seed_pos)
    assert more_ids == {ids[i] for i in want}
    more = res.manifest["steps"][1]
    assert more["stats"] == {"candidates": N, "start_centres": 4, "picked": 6}
    assert set(res.rows.filter(pl.col("step_more") != "kept")["step_more"]) == {
        "not picked by k-center (k=6, continuing from seed)"}


def test_start_rows_outside_the_candidates_are_centres_too(write_recipe, pool, tiny_models, host, isolated_cache):
    # candidates (no input) and the seed rows (with input) are disjoint: seed rows are appended as centres
    res = dqf.run(write_recipe(seeded(tiny_models["bert"], where='where = "input = \'\'"')))
    ids = ordered_ids(res)
    texts = {i: r["instruction"] for i, r in zip(ids, pool)}
    has_input = {i for i, r in zip(ids, pool) if r["input"]}
    cand = [i for i in ids if i not in has_input]
    seed_ids = sorted(picked(res, "seed"), key=ids.index)
    assert seed_ids and set(seed_ids) <= has_input
    X = cached_vectors(host, tiny_models["bert"], [texts[i] for i in cand + seed_ids], isolated_cache)
    want = dqf.select.kcenter_greedy(X, 6, already_selected=range(len(cand), len(cand) + len(seed_ids)))
    assert picked(res, "more") == {cand[i] for i in want}
    assert res.manifest["steps"][1]["stats"] == {"candidates": len(cand), "start_centres": 4, "picked": 6}


def test_plain_kcenter_like_the_reference_scripts(write_recipe, pool, tiny_models, host, isolated_cache):
    bert = tiny_models["bert"]
    cont = dqf.run(write_recipe(seeded(bert, out="c"), "c.toml"))
    plain = dqf.run(write_recipe(seeded(bert, opts=", continue_from_centres = false", out="p"), "p.toml"))
    ids = ordered_ids(plain)
    seed_ids = picked(plain, "seed")
    assert seed_ids == picked(cont, "seed")
    more = picked(plain, "more")
    assert len(more) == 6 and not more & seed_ids  # exclude_start (default): seed rows are never re-picked
    assert more != picked(cont, "more")
    cand = [i for i in ids if i not in seed_ids]
    X = cached_vectors(host, tiny_models["bert"], [r["instruction"] for i, r in zip(ids, pool) if i not in seed_ids],
                       isolated_cache)
    want = dqf.select.kcenter_greedy(X, 6, first=first_by_seed(cand, 0))
    assert more == {cand[i] for i in want}
    # exclude_start = false: every row is a candidate, as in the reference scripts
    both = dqf.run(write_recipe(seeded(bert, opts=", continue_from_centres = false, exclude_start = false", out="b"),
                                "b.toml"))
    X_all = cached_vectors(host, tiny_models["bert"], [r["instruction"] for r in pool], isolated_cache)
    assert picked(both, "more") == {ids[i] for i in dqf.select.kcenter_greedy(X_all, 6, first=first_by_seed(ids, 0))}


def test_depends_on_orders_steps(write_recipe, pool, tiny_models):
    # "more" is written first but needs "seed": the engine runs seed first
    text = recipe(tiny_models["bert"], """
[[steps]]
id = "more"
select = { plugin = "kcenter", k = 3, start_from = "seed", embedder = EMB }

[[steps]]
id = "seed"
from = "input"
select = { plugin = "kcenter", k = 2, embedder = EMB }
""")
    recipe_, _ = dqf.load_recipe(write_recipe(text))
    assert [s.id for s in recipe_.steps] == ["seed", "more"]


def _errors(write_recipe, text):
    with pytest.raises(dqf.RecipeError) as err:
        dqf.validate(write_recipe(text))
    return str(err.value)


STEP0 = '[[steps]]\nid = "s0"\nselect = { plugin = "random", k = 10 }\n'


def test_validation_errors(write_recipe, tiny_models):
    m = tiny_models["bert"]
    msg = _errors(write_recipe, recipe(m, STEP0 + '[[steps]]\nid = "s1"\nselect = { plugin = "kcenter", k = 2, '
                                                  'embedder = { plugin = "hf-encodr" } }\n'))
    assert "steps[1].select.embedder.plugin: unknown embedder 'hf-encodr'" in msg and "did you mean 'hf-encoder'" in msg
    msg = _errors(write_recipe, recipe(m, STEP0 + '[[steps]]\nid = "s1"\nselect = { plugin = "kcenter", k = 2, '
                                                  'embedder = { plugin = "hf-encoder", poolng = "mean" } }\n'))
    assert "steps[1].select.embedder.poolng: unknown key" in msg
    msg = _errors(write_recipe, recipe(m, STEP0 + '[[steps]]\nid = "s1"\nselect = { plugin = "kcenter", k = 2, '
                                                  'embedder = { plugin = "random", k = 3 } }\n'))
    assert "steps[1].select.embedder.plugin: 'random' is a selector" in msg
    msg = _errors(write_recipe, recipe(m, STEP0 + '[[steps]]\nid = "s1"\nselect = { plugin = "kcenter", k = 2, '
                                                  'start_from = "nope", embedder = EMB }\n'))
    assert "steps[1].select: refers to step 'nope', which does not exist" in msg
    msg = _errors(write_recipe, recipe(m, STEP0 + '[[steps]]\nid = "s1"\nselect = { plugin = "kcenter", '
                                                  'embedder = EMB }\n'))
    assert "give exactly one of `k` or `fraction`" in msg
    msg = _errors(write_recipe, recipe(m, STEP0 + '[[steps]]\nid = "s1"\nselect = { plugin = "kcenter", k = 2, '
                                                  'start_from = "s0", exclude_start = false, embedder = EMB }\n'))
    assert "exclude_start = false needs continue_from_centres = false" in msg
    msg = _errors(write_recipe, recipe(m, STEP0 + '[[steps]]\nid = "s1"\nselect = { plugin = "kcenter", k = 2, '
                                                  'start_from = "s0", first = "x", embedder = EMB }\n'))
    assert "`first` cannot be combined with start_from" in msg
    # the embedder's `field` column must exist on the step's path
    msg = _errors(write_recipe, recipe(m, STEP0 + '[[steps]]\nid = "s1"\nselect = { plugin = "kcenter", k = 2, '
                                                  'embedder = { plugin = "hf-encoder", field = "category" } }\n'))
    assert "steps[1].select: needs column 'category'" in msg


def test_default_embedder_is_the_mods_bert(host):
    info = host.get("selector", "kcenter")
    o = info.cls.Options(k=3)
    assert o.embedder.plugin == "hf-encoder" and o.embedder.plugin_options() == {}
    assert (o.start_from, o.continue_from_centres, o.exclude_start, o.first, o.seed) == (None, True, True, None, None)
