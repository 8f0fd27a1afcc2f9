"""`deita-complexity` / `deita-quality` / `deita-score`: batched expected scores equal a one-row computation on a
tiny Llama, per turn for multi-turn rows, combined as DEITA does (Σ complexity × quality), through the engine."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch

import dqf
from dqf.lm import turn_pairs
from dqf_contrib.deita.complexity import COMPLEXITY_PROMPT, DeitaComplexityScorer
from dqf_contrib.deita.quality import QUALITY_PROMPT, DeitaQualityScorer
from dqf_contrib.deita.score import DeitaScoreScorer, evol_score


def rows(example_pool, n=7):
    out = []
    for line in example_pool.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if len((r["instruction"] + " " + r["input"] + " " + r["output"]).split()) <= 60:
            out.append(r)
        if len(out) == n:
            return out


def frame(rs, n_turns=1):
    return pl.DataFrame({"id": [str(i) for i in range(len(rs))], "instruction": [r["instruction"] for r in rs],
                         "input": [r["input"] for r in rs], "output": [r["output"] for r in rs],
                         "n_turns": [n_turns] * len(rs)})


def reference(model, tok, text):
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1].double()
    digits = [tok.convert_tokens_to_ids(str(i)) for i in range(1, 7)]
    return float((torch.softmax(logits[digits], 0) * torch.arange(1, 7)).sum())


def q(r):
    return f"{r['instruction']}\n{r['input']}" if r["input"] else r["instruction"]


@pytest.mark.parametrize("cls", [DeitaComplexityScorer, DeitaQualityScorer])
def test_matches_one_row_reference(llama, example_pool, cls):
    path, model, tok = llama
    rs = rows(example_pool)
    s = cls(cls.Options(model=str(path), batch_size=3))
    s.setup()
    out = s.score(frame(rs))
    got = out[s.default_column].to_numpy()
    if cls is DeitaComplexityScorer:
        want = [reference(model, tok, COMPLEXITY_PROMPT.format(instruction=q(r))) for r in rs]
    else:
        want = [reference(model, tok, QUALITY_PROMPT.format(instruction=q(r), output=r["output"])) for r in rs]
    assert np.all((got >= 1) & (got <= 6))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert list(cls(cls.Options(model=str(path))).columns()) == [s.default_column, f"{s.default_column}_turns"]
    assert out[f"{s.default_column}_turns"].to_list() == [[v] for v in got.tolist()]  # one turn per row


def test_long_and_multi_turn_rows(llama, example_pool):
    path, _, _ = llama
    s = DeitaQualityScorer(DeitaQualityScorer.Options(model=str(path), max_length=60, column="dq"))
    s.setup()
    long = {"instruction": "explain the answer", "input": "", "output": "word " * 200}
    out = s.score(frame([long, rows(example_pool, 1)[0]], n_turns=2))  # no turns column: canonical view only
    assert out.columns == ["dq", "dq_turns"] and out["dq"].null_count() == 0
    st = s.stats()
    assert st["truncated_turns"] >= 1 and st["first_turn_only_rows"] == 2


def test_turn_pairs():
    t = [{"role": "system", "content": "be nice"}, {"role": "user", "content": "q1"},
         {"role": "assistant", "content": "a1"}, {"role": "tool", "content": "x"},
         {"role": "assistant", "content": "a1b"}, {"role": "user", "content": "q2"},
         {"role": "assistant", "content": "a2"}, {"role": "user", "content": "q3"}]
    assert turn_pairs(t) == [("q1", "a1"), ("q2", "a2"), ("q3", "")]  # first reply; unanswered last query: ""
    assert evol_score([2.0, 3.0], [4.0, 5.0]) == 23.0
    assert evol_score([2.0, None], [4.0, 5.0]) is None and evol_score([2.0], [4.0, 5.0]) is None


CHATS = [
    {"conversations": [{"from": "human", "value": "Name a color."}, {"from": "gpt", "value": "Blue is a color."},
                       {"from": "human", "value": "Explain why the sky is blue in detail."},
                       {"from": "gpt", "value": "Light is scattered by the air, and blue light is scattered most."}]},
    {"conversations": [{"from": "system", "value": "You answer briefly."},
                       {"from": "human", "value": "Give three tips for staying healthy."},
                       {"from": "gpt", "value": "Eat well, sleep, and exercise."}]},
    {"conversations": [{"from": "human", "value": "Write a short poem."}, {"from": "gpt", "value": "The sun is here."},
                       {"from": "human", "value": "Make it longer."}, {"from": "gpt", "value": "The sun is here and warm."},
                       {"from": "human", "value": "Thanks, now a title?"}]},
]

RECIPE = """\
name = "deita-chat"
[input]
path = "chats.jsonl"
format = "sharegpt"
[output]
dir = "out{n}"
[[steps]]
id = "complexity"
score = {{ plugin = "deita-complexity", model = "{model}", device = "cpu" }}
[[steps]]
id = "quality"
score = {{ plugin = "deita-quality", model = "{model}", device = "cpu" }}
[[steps]]
id = "evol"
score = {{ plugin = "deita-score" }}
"""


def test_multi_turn_rows_scored_per_turn_and_combined(llama, write_jsonl, write_recipe):
    path, model, tok = llama
    write_jsonl(CHATS, "chats.jsonl")
    res = dqf.run(write_recipe(RECIPE.format(n=1, model=path)))
    rows_ = res.rows
    assert rows_["deita_complexity_turns"].list.len().to_list() == [2, 1, 3]
    for chat, r in zip(CHATS, rows_.iter_rows(named=True)):
        turns = [(t["from"], t["value"]) for t in chat["conversations"]]
        pairs = []  # (query, reply) one turn at a time, straight from the record
        for i, (role, text) in enumerate(turns):
            if role == "human":
                nxt = turns[i + 1] if i + 1 < len(turns) else None
                pairs.append((text, nxt[1] if nxt and nxt[0] == "gpt" else ""))
        c = [reference(model, tok, COMPLEXITY_PROMPT.format(instruction=qq)) for qq, _ in pairs]
        q_ = [reference(model, tok, QUALITY_PROMPT.format(instruction=qq, output=a)) for qq, a in pairs]
        np.testing.assert_allclose(r["deita_complexity_turns"], c, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(r["deita_quality_turns"], q_, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(r["deita_complexity"], np.mean(c), rtol=1e-5)
        np.testing.assert_allclose(r["deita_quality"], np.mean(q_), rtol=1e-5)
        np.testing.assert_allclose(r["deita_score"], sum(a * b for a, b in zip(c, q_)), rtol=1e-5)
    steps = {st["id"]: st for st in res.manifest["steps"]}
    assert steps["complexity"]["stats"]["turns_scored"] == 6 and steps["complexity"]["stats"]["multi_turn_rows"] == 2

    # a changed later turn is a new row (its id hashes every turn): only it is scored again
    changed = json.loads(json.dumps(CHATS))
    changed[0]["conversations"][3]["value"] = "Because of Rayleigh scattering."
    write_jsonl(changed, "chats.jsonl")
    res2 = dqf.run(write_recipe(RECIPE.format(n=2, model=path), "r2.toml"))
    steps = {st["id"]: st for st in res2.manifest["steps"]}
    assert steps["complexity"]["cache"] == {"hits": 2, "computed": 1}
    assert steps["quality"]["cache"] == {"hits": 2, "computed": 1}
    assert steps["evol"]["cache"] == {"hits": 2, "computed": 1}
    assert res2.rows["deita_complexity"].to_list()[1:] == rows_["deita_complexity"].to_list()[1:]
    assert res2.rows["deita_quality_turns"][0][0] == pytest.approx(rows_["deita_quality_turns"][0][0])
    assert res2.rows["deita_quality_turns"][0][1] != pytest.approx(rows_["deita_quality_turns"][0][1])


def test_deita_score_needs_both_per_turn_columns(write_jsonl, write_recipe):
    write_jsonl(CHATS, "chats.jsonl")
    recipe = write_recipe('name = "x"\n[input]\npath = "chats.jsonl"\n[output]\ndir = "o"\n'
                          '[[steps]]\nid = "evol"\nscore = { plugin = "deita-score" }\n')
    with pytest.raises(dqf.RecipeError) as err:
        dqf.validate(recipe)
    assert "deita_complexity_turns" in str(err.value) and "deita_quality_turns" in str(err.value)
    assert DeitaScoreScorer().requires() == {"deita_complexity_turns", "deita_quality_turns"}
