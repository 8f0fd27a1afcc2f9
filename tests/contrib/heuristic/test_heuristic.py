"""`heuristic` scorer: every column on hand-made rows whose answers are known, computed on whole batches."""

from __future__ import annotations

import polars as pl
import pytest
from pydantic import ValidationError

import dqf
import dqf.registry

GOOD_INSTRUCTION = "Name three primary colors."
GOOD_OUTPUT = "The three primary colors are red, blue and yellow."


@pytest.fixture(scope="module")
def Heuristic():
    info = dqf.registry.build_plugin_manager().get("scorer", "heuristic")
    assert info.provider.distribution == "dqf"
    assert info.cls.__module__ == "dqf_contrib.heuristic.heuristic"
    return info.cls


def batch(rows):
    """rows: (instruction, input, output) tuples -> the frame the engine hands a scorer."""
    return pl.DataFrame({
        "id": [f"id{i}" for i in range(len(rows))],
        "instruction": [r[0] for r in rows],
        "input": [r[1] for r in rows],
        "output": [r[2] for r in rows],
        "n_turns": [1] * len(rows),
    }, schema={"id": pl.String, "instruction": pl.String, "input": pl.String, "output": pl.String, "n_turns": pl.Int32})


def score(cls, rows, **opts):
    scorer = cls(cls.Options(**opts))
    scorer.setup()
    out = scorer.score(batch(rows))
    assert isinstance(out, pl.DataFrame)
    assert out.height == len(rows)
    assert dict(out.schema) == dict(scorer.columns())
    return out.to_dicts()


def one(cls, instruction, output, inp="", **opts):
    return score(cls, [(instruction, inp, output)], **opts)[0]


def test_good_row(Heuristic):
    r = one(Heuristic, GOOD_INSTRUCTION, GOOD_OUTPUT)
    assert r == {
        "instruction_words": 4,
        "instruction_chars": 26,
        "output_words": 9,
        "output_chars": 50,
        "output_ttr": 1.0,
        "output_repetition": 0.0,
        "output_empty": False,
        "output_refusal": False,
        "output_copies_instruction": False,
        "output_placeholder": False,
        "garbled_ratio": 0.0,
        "output_letter_share": pytest.approx(40 / 42),
        "output_symbol_share": 0.0,
        "output_junk": False,
        "output_truncated": False,
        "output_boilerplate": False,
        "heuristic_ok": True,
        "heuristic_reason": None,
        "heuristic_failed_turn": None,
    }


def test_word_and_char_counts(Heuristic):
    rows = score(Heuristic, [
        ("  Two   words ", "", "a\tb\nc  d"),
        ("Ünïcödé wörds here", "", "日本語 テキスト"),
        ("x", "", "don't stop-me now"),
    ])
    assert [(r["instruction_words"], r["instruction_chars"]) for r in rows] == [(2, 14), (3, 18), (1, 1)]
    assert [(r["output_words"], r["output_chars"]) for r in rows] == [(4, 8), (2, 8), (3, 17)]


def test_empty_output(Heuristic):
    for output, chars in [("", 0), ("   \n\t", 5)]:
        r = one(Heuristic, "Say something.", output)
        assert r["output_empty"] is True
        assert r["output_words"] == 0 and r["output_chars"] == chars
        assert r["output_ttr"] is None  # no words, no ratio
        assert r["output_repetition"] == 0.0
        assert r["heuristic_ok"] is False
    assert one(Heuristic, "Say something.", ".")["output_empty"] is False


@pytest.mark.parametrize("output", [
    "I'm sorry, but I cannot help with that request.",
    "As an AI language model, I do not have opinions.",
    "AS AN AI LANGUAGE MODEL I CANNOT SAY.",
    "Well. I apologize, but the answer is unknown.",
    "I am unable to browse the internet.",
    "I don't have personal experiences, but here is a summary.",
])
def test_refusal_phrases(Heuristic, output):
    r = one(Heuristic, "Tell me something.", output)
    assert r["output_refusal"] is True
    assert r["heuristic_ok"] is False


@pytest.mark.parametrize("output", [
    "I am sorry to hear that your cat is ill.",
    "The model is able to answer this.",
    "Languages such as Python are popular.",
    "I cannot wait to see it!",
])
def test_not_refusals(Heuristic, output):
    r = one(Heuristic, "Tell me something.", output)
    assert r["output_refusal"] is False
    assert r["heuristic_ok"] is True


def test_copied_instruction(Heuristic):
    instruction = "Write a short poem about the ocean waves."
    copied = one(Heuristic, instruction, instruction + " The ocean waves roll in and out.")
    assert copied["output_copies_instruction"] is True and copied["heuristic_ok"] is False
    # case and surrounding whitespace do not hide a copy
    shouty = one(Heuristic, "  " + instruction.upper() + "  ", "Sure: " + instruction.lower() + " Waves crash.")
    assert shouty["output_copies_instruction"] is True
    # a short instruction (under min_copy_chars) is not a copy even when it appears in the output
    short = one(Heuristic, "Say hi", "Say hi there, friend!")
    assert short["output_copies_instruction"] is False and short["heuristic_ok"] is True
    assert one(Heuristic, "Say hi", "Say hi there, friend!", min_copy_chars=5)["output_copies_instruction"] is True
    # a different output is not a copy
    assert one(Heuristic, instruction, "Blue water rises, falls, and sighs.")["output_copies_instruction"] is False


def test_repetition(Heuristic):
    looping = one(Heuristic, "Help me.", "I will help you. " * 30)
    # 120 words, 118 word 3-grams, only 4 distinct: 1 - 4/118
    assert looping["output_repetition"] == pytest.approx(1 - 4 / 118)
    assert looping["output_repetition"] > 0.95
    assert looping["output_ttr"] == pytest.approx(4 / 120)
    assert looping["heuristic_ok"] is False
    distinct = one(Heuristic, "Q", "Every word in this sentence appears exactly once here.")
    assert distinct["output_repetition"] == 0.0
    # a b c a b c: 3-grams abc, bca, cab, abc -> 3 distinct of 4
    assert one(Heuristic, "Q", "a b c a b c")["output_repetition"] == pytest.approx(0.25)


@pytest.mark.parametrize("output,words", [("Yes.", 1), ("Yes indeed.", 2)])
def test_repetition_of_very_short_outputs(Heuristic, output, words):
    r = one(Heuristic, "Is it?", output)
    assert r["output_words"] == words
    assert r["output_repetition"] == 0.0
    assert r["heuristic_ok"] is True


def test_type_token_ratio(Heuristic):
    assert one(Heuristic, "Q", "the cat and the dog")["output_ttr"] == pytest.approx(4 / 5)
    assert one(Heuristic, "Q", "The THE the")["output_ttr"] == pytest.approx(1 / 3)  # case-insensitive
    assert one(Heuristic, "Q", "don't don't do")["output_ttr"] == pytest.approx(2 / 3)  # contractions are one word
    assert one(Heuristic, "Q", "...")["output_ttr"] is None


def test_garbled_text(Heuristic):
    # control characters: "x" + "\n" + "abc\x00\x01def" -> 2 garbled of 10 characters
    ctrl = one(Heuristic, "x", "abc\x00\x01def")
    assert ctrl["garbled_ratio"] == pytest.approx(2 / 10)
    assert ctrl["heuristic_ok"] is False
    # U+FFFD and a private-use character count; tab, newline and CR do not
    repl = one(Heuristic, "x", "caf\ufffd \ue000x\ty")
    assert repl["garbled_ratio"] == pytest.approx(2 / 11)
    clean = one(Heuristic, "x", "line one\r\nline\ttwo\n")
    assert clean["garbled_ratio"] == 0.0
    # the input field counts too
    in_input = one(Heuristic, "abcd", "fine output here", inp="\x07\x07")
    assert in_input["garbled_ratio"] == pytest.approx(2 / len("abcd\n\x07\x07fine output here"))
    assert in_input["heuristic_ok"] is False


@pytest.mark.parametrize("instruction,output,opts,reason_column", [
    ("Say something.", "", {}, "output_empty"),
    ("Tell me.", "I'm sorry, but I cannot do that.", {}, "output_refusal"),
    ("Write a short poem about the ocean waves.", "Write a short poem about the ocean waves.", {}, "output_copies_instruction"),
    ("Explain.", "Short answer here.", {"min_output_words": 5}, "output_words"),
    ("Design a logo for the given company.", "<nooutput> Visuals cannot be created by a language model.", {},
     "output_placeholder"),
    ("Help me.", "I will help you. " * 10, {}, "output_repetition"),
    ("Spell.", "ok \x00\x00\x00 text", {}, "garbled_ratio"),
])
def test_heuristic_ok_false_for_each_reason(Heuristic, instruction, output, opts, reason_column):
    r = one(Heuristic, instruction, output, **opts)
    assert r["heuristic_ok"] is False
    flags = {
        "output_empty": r["output_empty"],
        "output_refusal": r["output_refusal"],
        "output_copies_instruction": r["output_copies_instruction"],
        "output_placeholder": r["output_placeholder"],
        "output_words": r["output_words"] < opts.get("min_output_words", 1),
        "output_repetition": r["output_repetition"] > 0.5,
        "garbled_ratio": r["garbled_ratio"] > 0.01,
    }
    assert flags[reason_column] is True
    if reason_column != "output_empty":  # an empty output also has too few words; otherwise each is alone
        assert [k for k, v in flags.items() if v] == [reason_column]


def test_thresholds_are_options(Heuristic):
    text = "I will help you. " * 10
    assert one(Heuristic, "Help me.", text)["heuristic_ok"] is False
    assert one(Heuristic, "Help me.", text, max_repetition=1.0)["heuristic_ok"] is True
    garbled = "ok \x00 text here"
    assert one(Heuristic, "Q", garbled)["heuristic_ok"] is False
    assert one(Heuristic, "Q", garbled, max_garbled=0.5)["heuristic_ok"] is True
    assert one(Heuristic, "Q", "three words here", min_output_words=3)["heuristic_ok"] is True
    assert one(Heuristic, "Q", "three words here", min_output_words=4)["heuristic_ok"] is False
    assert one(Heuristic, "Q", "", min_output_words=0)["heuristic_ok"] is False  # empty is never ok


def test_option_validation(Heuristic):
    with pytest.raises(ValidationError):
        Heuristic.Options(max_repetition=1.5)
    with pytest.raises(ValidationError):
        Heuristic.Options(min_copy_chars=0)
    with pytest.raises(ValidationError):
        Heuristic.Options(min_words=3)  # unknown option
    a, b = Heuristic(Heuristic.Options()), Heuristic(Heuristic.Options(max_garbled=0.2))
    assert a.cache_key() != b.cache_key()
    assert a.cache_key() == Heuristic(Heuristic.Options()).cache_key()


def test_whole_batch_in_one_call_keeps_row_order(Heuristic):
    """score() works on a polars batch: many mixed rows in one call, results aligned with the rows."""
    kinds = [
        (GOOD_INSTRUCTION, "", GOOD_OUTPUT),
        ("Say something.", "", ""),
        ("Tell me.", "", "As an AI language model, I cannot."),
        ("Help me.", "", "I will help you. " * 12),
        ("x", "", "abc\x00\x01def"),
    ]
    n = 20_000
    rows = [kinds[i % len(kinds)] for i in range(n)]
    scorer = Heuristic()
    out = scorer.score(batch(rows))
    assert isinstance(out, pl.DataFrame) and out.height == n
    assert out.columns == list(scorer.columns())
    ok = out["heuristic_ok"].to_list()
    assert ok == [i % len(kinds) == 0 for i in range(n)]
    assert out["output_empty"].to_list() == [i % len(kinds) == 1 for i in range(n)]
    assert out["output_refusal"].to_list() == [i % len(kinds) == 2 for i in range(n)]
    assert out["output_words"][:5].to_list() == [9, 0, 7, 48, 1]


def test_empty_batch(Heuristic):
    scorer = Heuristic()
    out = scorer.score(batch([]))
    assert out.height == 0
    assert dict(out.schema) == dict(scorer.columns())


def test_scores_reach_rows_parquet(tmp_path, write_jsonl, write_recipe):
    write_jsonl([
        {"instruction": GOOD_INSTRUCTION, "input": "", "output": GOOD_OUTPUT},
        {"instruction": "Tell me.", "input": "", "output": "I'm sorry, but I cannot do that."},
        {"instruction": "Say something.", "input": "", "output": ""},
    ])
    recipe = write_recipe("""
        name = "heur"
        [input]
        path = "pool.jsonl"
        [output]
        dir = "out"
        [[steps]]
        id = "h"
        score = { plugin = "heuristic" }
        where = "heuristic_ok"
        batch_size = 2
    """)
    res = dqf.run(recipe)
    rows = pl.read_parquet(tmp_path / "out" / "rows.parquet")
    assert rows["heuristic_ok"].to_list() == [True, False, False]
    assert rows["output_refusal"].to_list() == [False, True, False]
    assert rows["selected"].to_list() == [True, False, False]
    # each dropped row says which check failed, with its value
    assert sorted(rows["reason"].drop_nulls()) == [
        "where: heuristic_ok (heuristic: output_empty)",
        "where: heuristic_ok (heuristic: output_refusal ('i'm sorry, but i cannot'))"]
    assert res.manifest["steps"][0]["cache"] == {"hits": 0, "computed": 3}



@pytest.mark.parametrize("instruction,output,reason", [
    ("Give a code.", "#$%&*+=<>[]{}|~^_ 3#4$5%6&7*8+9=0", "heuristic: output_letter_share 0.0 < 0.2 (symbol share 0.75 > 0.25)"),
    ("Encode.", "SGVsbG8gd29ybGQsIHRoaXMgaXMgYSBiYXNlNjQgYmxvYiB0aGF0IGdvZXMgb24gYW5kIG9uIGFuZCBvbg==",
     "heuristic: output_blob_share 1.0 > 0.5"),
    ("Say it.", "It donâ€™t matter, the cafÃ© is closed.", "heuristic: output_mojibake 2 sequences >= 2"),
    ("Describe rain.", "Lorem ipsum dolor sit amet, consectetur.", "heuristic: output_boilerplate ('lorem ipsum')"),
    ("Describe rain.", "This website uses cookies. Rain is water.", "heuristic: output_boilerplate ('this website uses cookies')"),
    ("Describe rain.", "<div class='x'>Rain is water falling.</div>", "heuristic: output_boilerplate (raw HTML, not asked for)"),
    ("Describe rain.", "Home | About | Contact | Blog\nRain is water.", "heuristic: output_boilerplate (a navigation bar)"),
    ("Write code.", "```python\nprint(1)\n", "heuristic: output_truncated (unclosed code fence)"),
    ("Name a fruit.", "The best fruit is the", "heuristic: output_truncated (ends on 'the', no closing punctuation)"),
    ("Explain why the sky is blue.", "The sky is blue because sunlight",
     "heuristic: output_truncated (6 words, no closing punctuation, prose asked for)"),
])
def test_junk_boilerplate_and_truncation_fail_with_their_reason(Heuristic, instruction, output, reason):
    r = one(Heuristic, instruction, output)
    assert r["heuristic_ok"] is False and r["heuristic_reason"] == reason


@pytest.mark.parametrize("instruction,output", [
    ("Sort the numbers 6, 88, 4.", "4, 6, 88"),                       # numbers: few letters, few symbols
    ("Solve for y.", "When x=-1, y=-2(-1)+3=1."),                      # maths
    ("Write an HTML page.", "<html><body><p>Hi</p></body></html>"),   # HTML that was asked for
    ("Name a book.", "The Lord of the Rings"),                         # a title: no punctuation, ends on a noun
    ("List three colours.", "Red, green, blue"),
    ("Find articles on AI.", "https://www.example.com/2021/04/12/the-artificial-intelligence-trends-for-2021/?sh=508"),
    ("Explain gravity.", "Gravity pulls masses together."),
])
def test_clean_answers_that_look_odd_pass(Heuristic, instruction, output):
    r = one(Heuristic, instruction, output)
    assert r["heuristic_ok"] is True and r["heuristic_reason"] is None, r["heuristic_reason"]


def test_the_new_checks_are_options(Heuristic):
    assert one(Heuristic, "Name a fruit.", "The best fruit is the", truncation=False)["heuristic_ok"] is True
    assert one(Heuristic, "Describe rain.", "Lorem ipsum dolor sit amet.", boilerplate=False)["heuristic_ok"] is True
    assert one(Heuristic, "Give.", "#$%&*+=<>[]{} 1234", min_letter_share=0.0)["heuristic_ok"] is True



def test_every_turn_of_a_conversation_is_checked(tmp_path, write_jsonl, write_recipe):
    """A refusal or a repetition in turn 2 fails the row; the reason names the turn; turn 1 stays the columns' view."""
    def chat(*pairs):
        return {"conversations": [m for q, a in pairs for m in ({"from": "human", "value": q},
                                                                   {"from": "gpt", "value": a})]}

    write_jsonl([
        chat((GOOD_INSTRUCTION, GOOD_OUTPUT), ("And secondary ones?", "Green, orange and purple.")),
        chat((GOOD_INSTRUCTION, GOOD_OUTPUT), ("Why?", "I'm sorry, but I cannot explain that.")),
        chat((GOOD_INSTRUCTION, GOOD_OUTPUT), ("More.", "more more more " * 10), ("Ok.", "As an AI language model, no.")),
        chat(("Tell me.", "I'm sorry, but I cannot do that."), ("Please?", "Fine: red is a colour.")),
    ])
    res = dqf.run(write_recipe('name = "mt"\n[input]\npath = "pool.jsonl"\n[output]\ndir = "out"\n[[steps]]\n'
                               'id = "h"\nscore = { plugin = "heuristic" }\nwhere = "heuristic_ok"\n'))
    rows = res.rows
    assert rows["heuristic_ok"].to_list() == [True, False, False, False]
    assert rows["heuristic_failed_turn"].to_list() == [None, 2, 2, 1]
    assert rows["heuristic_reason"].to_list() == [
        None, "turn 2: heuristic: output_refusal ('i'm sorry, but i cannot')",
        "turn 2: heuristic: output_repetition 0.96 > 0.5", "heuristic: output_refusal ('i'm sorry, but i cannot')"]
    assert rows["output_refusal"].to_list() == [False, False, False, True]  # the first exchange's statistics
    assert rows["reason"][1] == "where: heuristic_ok (turn 2: heuristic: output_refusal ('i'm sorry, but i cannot'))"


@pytest.mark.parametrize("output,placeholder", [
    ("<nooutput>", "<nooutput>"), ("<No output>", "<no output>"), ("No output required", "no output required"),
    ('<noinput>\n"A Leap of Faith"', "<noinput>"), ("No Output.", "no output."),
    ("There is no output required here, as the function returns nothing.", None),  # prose that says so
    ("None.", None),  # a legitimate answer
])
def test_placeholders_where_the_answer_should_be(Heuristic, output, placeholder):
    r = one(Heuristic, "Design a poster to advertise a product.", output)
    assert r["output_placeholder"] is (placeholder is not None)
    if placeholder:
        assert r["heuristic_reason"] == f"heuristic: output_placeholder ('{placeholder}')"
