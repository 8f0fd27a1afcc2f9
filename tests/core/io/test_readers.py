"""Readers: every supported input shape, every kind of bad row, stable ids and duplicates."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import dqf
from dqf import DataError
from dqf.io.readers import input_files, merge_parts, read_file, read_input


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    """Messages name files relative to the working directory; run in tmp_path so they are bare names."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


GOOD = [
    {"instruction": "Name a colour.", "input": "", "output": "Red."},
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
]


def _dump(rec) -> bytes:
    return rec if isinstance(rec, bytes) else json.dumps(rec).encode()


def write_text_container(path, records):
    """Write records (dicts or raw bytes) as JSONL (one per line) or a JSON array (element k on line k + 2)."""
    parts = [_dump(r) for r in records]
    if path.suffix == ".jsonl":
        path.write_bytes(b"".join(p + b"\n" for p in parts))
    else:
        path.write_bytes(b"[\n" + b",\n".join(parts) + b"\n]\n")
    return path


def write_parquet(path, records):
    pq.write_table(pa.Table.from_pylist(records), path)
    return path


def frame_rows(result):
    return result.frame.select("instruction", "input", "output", "n_turns").to_dicts()


# ---------------------------------------------------------------------------------------------
# Good input in every format
# ---------------------------------------------------------------------------------------------
def test_alpaca_jsonl(tmp_path):
    path = write_text_container(tmp_path / "pool.jsonl", GOOD)
    res = read_input(path)
    assert frame_rows(res) == [
        {"instruction": "Name a colour.", "input": "", "output": "Red.", "n_turns": 1},
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5", "n_turns": 1},
    ]
    assert res.rows_read == 2 and res.duplicates == 0 and res.quarantined == []
    assert res.frame["_source"].to_list() == ["pool.jsonl:1", "pool.jsonl:2"]
    assert res.frame["copies"].to_list() == [1, 1]
    assert [json.loads(r) for r in res.frame["_raw"]] == GOOD
    assert res.files == [{"path": "pool.jsonl", "sha256": res.files[0]["sha256"], "rows": 2}]
    assert len(res.files[0]["sha256"]) == 64


def test_jsonl_blank_lines_are_skipped_and_line_numbers_stay_true(tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_text("\n" + json.dumps(GOOD[0]) + "\n\n   \n" + json.dumps(GOOD[1]) + "\n", encoding="utf-8")
    res = read_input(path)
    assert res.rows_read == 2
    assert res.frame["_source"].to_list() == ["pool.jsonl:2", "pool.jsonl:5"]


def test_jsonl_with_byte_order_mark(tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD[0]).encode() + b"\n")
    res = read_input(path)
    assert res.frame["instruction"].to_list() == ["Name a colour."]


def test_missing_input_field_reads_as_empty(tmp_path):
    path = write_text_container(tmp_path / "pool.jsonl", [{"instruction": "Say hi.", "output": "Hi."},
                                                          {"instruction": "Q", "input": None, "output": "A"}])
    res = read_input(path)
    assert res.frame["input"].to_list() == ["", ""]


def test_json_array_line_numbers_of_each_element(tmp_path):
    rows = [
        {"instruction": "First", "output": "one"},
        {"instruction": "Second", "input": "multi\nline", "output": "two"},
        {"instruction": "Third", "output": "three"},
    ]
    text = json.dumps(rows, indent=2)
    path = tmp_path / "pool.json"
    path.write_text(text, encoding="utf-8")
    # Each element starts on a line that is exactly "  {".
    starts = [i for i, line in enumerate(text.splitlines(), 1) if line == "  {"]
    assert len(starts) == 3 and starts[0] == 2
    res = read_input(path)
    assert res.frame["_source"].to_list() == [f"pool.json:{n}" for n in starts]
    assert res.frame["instruction"].to_list() == ["First", "Second", "Third"]
    assert res.frame["input"].to_list() == ["", "multi\nline", ""]


def test_json_array_compact_on_one_line(tmp_path):
    path = tmp_path / "pool.json"
    path.write_text(json.dumps(GOOD), encoding="utf-8")
    res = read_input(path)
    assert res.frame["_source"].to_list() == ["pool.json:1", "pool.json:1"]
    assert res.frame["output"].to_list() == ["Red.", "5"]


def test_json_array_several_elements_per_line(tmp_path):
    path = tmp_path / "pool.json"
    a, b, c = (json.dumps({"instruction": f"i{k}", "output": f"o{k}"}) for k in range(3))
    path.write_text(f"[{a}, {b},\n\n   {c}]", encoding="utf-8")
    res = read_input(path)
    assert res.frame["_source"].to_list() == ["pool.json:1", "pool.json:1", "pool.json:3"]


def test_sharegpt_multi_turn_kept_whole(tmp_path):
    conv = {
        "id": "conv-1",
        "conversations": [
            {"from": "system", "value": "You are helpful."},
            {"from": "human", "value": "What is 2+2?"},
            {"from": "gpt", "value": "4."},
            {"from": "human", "value": "And times 3?"},
            {"from": "gpt", "value": "12."},
        ],
    }
    path = write_text_container(tmp_path / "chat.jsonl", [conv])
    res = read_input(path)
    assert frame_rows(res) == [{"instruction": "What is 2+2?", "input": "", "output": "4.", "n_turns": 2}]
    assert json.loads(res.frame["_raw"][0]) == conv  # every turn and the extra key are kept


def test_sharegpt_reply_is_the_assistant_turn_after_the_first_user_turn(tmp_path):
    conv = {"conversations": [
        {"from": "gpt", "value": "Hello! How can I help?"},  # an assistant greeting before the user speaks
        {"from": "human", "value": "Tell me a joke."},
        {"from": "observation", "value": "tool output"},
        {"from": "gpt", "value": "Why did the chicken cross the road?"},
    ]}
    path = write_text_container(tmp_path / "chat.jsonl", [conv])
    res = read_input(path, fmt="sharegpt")
    assert frame_rows(res) == [{"instruction": "Tell me a joke.", "input": "",
                                "output": "Why did the chicken cross the road?", "n_turns": 1}]


def test_openai_messages_with_content_parts(tmp_path):
    rows = [
        {"messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Describe "},
                                         {"type": "image_url", "image_url": {"url": "http://x/img.png"}},
                                         {"type": "text", "text": "this picture."}]},
            {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
        ]},
        {"messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": "Goodbye"},
        ]},
    ]
    path = write_text_container(tmp_path / "msgs.jsonl", rows)
    res = read_input(path, fmt="messages")
    assert frame_rows(res) == [
        {"instruction": "Describe this picture.", "input": "", "output": "A cat.", "n_turns": 1},
        {"instruction": "Hi", "input": "", "output": "Hello", "n_turns": 2},
    ]
    assert json.loads(res.frame["_raw"][1]) == rows[1]
    # auto-detection gives the same result
    assert frame_rows(read_input(path)) == frame_rows(res)


def test_parquet_input(tmp_path):
    rows = [dict(r, category=c) for r, c in zip(GOOD, ["open_qa", "math"])]
    path = write_parquet(tmp_path / "pool.parquet", rows)
    res = read_input(path)
    assert frame_rows(res) == frame_rows(read_input(write_text_container(tmp_path / "pool.jsonl", GOOD)))
    assert res.frame["_source"].to_list() == ["pool.parquet row 1", "pool.parquet row 2"]
    assert [json.loads(r)["category"] for r in res.frame["_raw"]] == ["open_qa", "math"]


def test_parquet_sharegpt_and_messages(tmp_path):
    conv = {"conversations": [{"from": "human", "value": "Q1"}, {"from": "gpt", "value": "A1"},
                              {"from": "human", "value": "Q2"}, {"from": "gpt", "value": "A2"}]}
    msgs = {"messages": [{"role": "user", "content": "mq"}, {"role": "assistant", "content": "ma"}]}
    res = read_input(write_parquet(tmp_path / "chat.parquet", [conv]))
    assert frame_rows(res) == [{"instruction": "Q1", "input": "", "output": "A1", "n_turns": 2}]
    res = read_input(write_parquet(tmp_path / "msgs.parquet", [msgs]))
    assert frame_rows(res) == [{"instruction": "mq", "input": "", "output": "ma", "n_turns": 1}]


def test_folder_of_mixed_shards(tmp_path):
    shards = tmp_path / "shards"
    (shards / "sub").mkdir(parents=True)
    write_text_container(shards / "a.jsonl", [{"instruction": "a1", "output": "x"}, {"instruction": "a2", "output": "x"}])
    write_parquet(shards / "b.parquet", [{"instruction": "b1", "input": "", "output": "y"}])
    write_text_container(shards / "sub" / "c.json", [{"instruction": "c1", "output": "z"}])
    (shards / "README.md").write_text("not data")
    (shards / "notes.txt").write_text("{not data either}")
    res = read_input(shards)
    assert res.frame["instruction"].to_list() == ["a1", "a2", "b1", "c1"]
    assert [f["path"] for f in res.files] == ["shards/a.jsonl", "shards/b.parquet", "shards/sub/c.json"]
    assert [f["rows"] for f in res.files] == [2, 1, 1]
    assert res.frame["_source"].to_list() == ["shards/a.jsonl:1", "shards/a.jsonl:2", "shards/b.parquet row 1",
                                              "shards/sub/c.json:2"]
    assert res.rows_read == 4


def test_field_mapping_dolly(tmp_path):
    dolly = [
        {"instruction": "Who wrote Hamlet?", "context": "", "response": "Shakespeare.", "category": "open_qa"},
        {"instruction": "Summarise.", "context": "A long text.", "response": "Short.", "category": "summarization"},
    ]
    path = write_text_container(tmp_path / "dolly.jsonl", dolly)
    res = read_input(path, fields={"input": "context", "output": "response"})
    assert frame_rows(res) == [
        {"instruction": "Who wrote Hamlet?", "input": "", "output": "Shakespeare.", "n_turns": 1},
        {"instruction": "Summarise.", "input": "A long text.", "output": "Short.", "n_turns": 1},
    ]
    assert json.loads(res.frame["_raw"][1])["category"] == "summarization"
    # the id is that of the canonical content, the same as an Alpaca row with the same text
    alpaca = write_text_container(tmp_path / "alpaca.jsonl", [
        {"instruction": "Who wrote Hamlet?", "input": "", "output": "Shakespeare."}])
    assert read_input(alpaca).frame["id"][0] == res.frame["id"][0]


def test_field_mapping_names_the_mapped_field_in_errors(tmp_path):
    path = write_text_container(tmp_path / "dolly.jsonl", [{"instruction": "Q", "context": "c"}])
    with pytest.raises(DataError) as err:
        read_input(path, fields={"input": "context", "output": "response"})
    assert str(err.value) == "dolly.jsonl:1: field 'response': missing"


def test_explicit_format_is_enforced(tmp_path):
    conv = {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}
    path = write_text_container(tmp_path / "chat.jsonl", [conv])
    with pytest.raises(DataError) as err:
        read_input(path, fmt="alpaca")
    assert str(err.value) == "chat.jsonl:1: field 'instruction': missing"


# ---------------------------------------------------------------------------------------------
# Bad rows in every reader
# ---------------------------------------------------------------------------------------------
_ROLES = "(expected one of assistant, bard, bing, chatgpt, function, function_call, gpt, human, ipython, model, " \
         "observation, system, tool, user)"

# (case id, bad record (dict or raw bytes), field or None, reason)
TEXT_CASES = [
    ("missing-output", {"instruction": "q"}, "output", "missing"),
    ("missing-instruction", {"input": "", "output": "a"}, "instruction", "missing"),
    ("null-instruction", {"instruction": None, "output": "a"}, "instruction", "missing"),
    ("wrong-type-output", {"instruction": "q", "output": 5}, "output", "expected a string, got int"),
    ("wrong-type-input", {"instruction": "q", "input": ["x"], "output": "a"}, "input", "expected a string, got list"),
    ("non-object-list", ["q", "a"], None, "expected a JSON object, got list"),
    ("non-object-string", "q", None, "expected a JSON object, got str"),
    ("non-object-null", None, None, "expected a JSON object, got null"),
    ("sharegpt-no-assistant", {"conversations": [{"from": "human", "value": "hi"}]},
     "conversations", "no assistant reply after the first user turn"),
    ("sharegpt-no-user", {"conversations": [{"from": "gpt", "value": "hi"}]}, "conversations", "no user turn"),
    ("sharegpt-unknown-role", {"conversations": [{"from": "human", "value": "hi"}, {"from": "robot", "value": "x"}]},
     "conversations[1].from", f"unknown role 'robot' {_ROLES}"),
    ("sharegpt-missing-value", {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt"}]},
     "conversations[1].value", "missing"),
    ("sharegpt-not-a-list", {"conversations": "hi"}, "conversations", "expected a list of turns, got str"),
    ("sharegpt-turn-not-object", {"conversations": ["hi", "there"]}, "conversations[0]", "expected an object, got str"),
    ("messages-no-assistant", {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]},
     "messages", "no assistant reply after the first user turn"),
    ("messages-unknown-role", {"messages": [{"role": "narrator", "content": "u"}]},
     "messages[0].role", f"unknown role 'narrator' {_ROLES}"),
    ("messages-missing-role", {"messages": [{"content": "u"}]}, "messages[0].role", "missing"),
    ("messages-content-wrong-type", {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": 7}]},
     "messages[1].content", "expected a string, got int"),
    ("invalid-utf8", b'{"instruction": "caf\xe9", "output": "a"}', None, "not valid UTF-8 (byte 0xe9 at column 21)"),
]
JSONL_ONLY_CASES = [
    ("undecodable-json", b'{"instruction": "q", "output": ', None, "invalid JSON (Expecting value at column 32)"),
    ("undecodable-json-trailing", b'{"instruction": "q", "output": "a"} x', None, "invalid JSON (Extra data at column 37)"),
]


def _expected(name, line, field, reason):
    return f"{name}:{line}: field '{field}': {reason}" if field else f"{name}:{line}: {reason}"


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
@pytest.mark.parametrize("case,bad,field,reason", TEXT_CASES, ids=[c[0] for c in TEXT_CASES])
def test_bad_row_error_names_file_line_and_field(tmp_path, suffix, case, bad, field, reason):
    path = write_text_container(tmp_path / f"pool{suffix}", [GOOD[0], bad, GOOD[1]])
    line = 2 if suffix == ".jsonl" else 3
    with pytest.raises(DataError) as err:
        read_input(path, on_bad_row="error")
    assert str(err.value) == _expected(path.name, line, field, reason)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
@pytest.mark.parametrize("case,bad,field,reason", TEXT_CASES, ids=[c[0] for c in TEXT_CASES])
def test_bad_row_quarantined_and_good_rows_read(tmp_path, suffix, case, bad, field, reason):
    path = write_text_container(tmp_path / f"pool{suffix}", [GOOD[0], bad, GOOD[1]])
    line = 2 if suffix == ".jsonl" else 3
    res = read_input(path, on_bad_row="quarantine")
    assert res.rows_read == 3
    assert frame_rows(res) == [dict(r, n_turns=1) for r in GOOD]
    assert len(res.quarantined) == 1
    q = res.quarantined[0]
    assert q["source"] == f"{path.name}:{line}"
    assert q["reason"] == (f"field '{field}': {reason}" if field else reason)
    assert isinstance(q["raw"], str) and q["raw"]
    json.dumps(q, ensure_ascii=False).encode("utf-8")  # quarantine.jsonl must be writable as UTF-8


@pytest.mark.parametrize("case,bad,field,reason", JSONL_ONLY_CASES, ids=[c[0] for c in JSONL_ONLY_CASES])
def test_undecodable_jsonl_line(tmp_path, case, bad, field, reason):
    path = write_text_container(tmp_path / "pool.jsonl", [GOOD[0], bad, GOOD[1]])
    with pytest.raises(DataError) as err:
        read_input(path)
    assert str(err.value) == f"pool.jsonl:2: {reason}"
    res = read_input(path, on_bad_row="quarantine")
    assert frame_rows(res) == [dict(r, n_turns=1) for r in GOOD]
    assert res.quarantined == [{"source": "pool.jsonl:2", "reason": reason, "raw": bad.decode()}]


def test_invalid_utf8_quarantine_raw_is_printable(tmp_path):
    path = write_text_container(tmp_path / "pool.jsonl", [GOOD[0], b'{"instruction": "\xff\xfe", "output": "a"}'])
    res = read_input(path, on_bad_row="quarantine")
    assert res.quarantined[0]["raw"] == '{"instruction": "\ufffd\ufffd", "output": "a"}'
    assert res.frame.height == 1


@pytest.mark.parametrize("mode", ["error", "quarantine"])
def test_broken_json_array_stops_with_file_and_line(tmp_path, mode):
    path = tmp_path / "pool.json"
    path.write_text('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c" "output": "d"}\n]\n')
    with pytest.raises(DataError) as err:
        read_input(path, on_bad_row=mode)
    assert str(err.value) == "pool.json:3: invalid JSON: Expecting ',' delimiter (column 23)"


@pytest.mark.parametrize("mode", ["error", "quarantine"])
def test_json_array_missing_comma_between_elements(tmp_path, mode):
    path = tmp_path / "pool.json"
    path.write_text('[\n  {"instruction": "a", "output": "b"}\n  {"instruction": "c", "output": "d"}\n]\n')
    with pytest.raises(DataError) as err:
        read_input(path, on_bad_row=mode)
    assert str(err.value) == "pool.json:3: invalid JSON: expected ',' or ']' after array element"


def test_unterminated_json_array(tmp_path):
    path = tmp_path / "pool.json"
    path.write_text('[\n  {"instruction": "a", "output": "b"},\n')
    with pytest.raises(DataError) as err:
        read_input(path)
    assert str(err.value).startswith("pool.json:3: invalid JSON: ")


def test_multiline_bad_json_element_reports_the_line_it_starts_on(tmp_path):
    rows = [GOOD[0], {"instruction": "q", "input": "", "output": 42}, GOOD[1]]
    path = tmp_path / "pool.json"
    path.write_text(json.dumps(rows, indent=2))
    # GOOD[0] takes lines 2-6 ("{", 3 keys, "},"), so the bad element starts on line 7
    with pytest.raises(DataError) as err:
        read_input(path)
    assert str(err.value) == "pool.json:7: field 'output': expected a string, got int"


PARQUET_CASES = [
    # (case id, records (bad one second), parquet schema or None, field, reason)
    ("missing-output", [GOOD[0], {"instruction": "q", "input": "", "output": None}, GOOD[1]], None,
     "output", "missing"),
    ("wrong-type-input", [dict(GOOD[0], input=None), {"instruction": "q", "input": 5, "output": "a"},
                          dict(GOOD[1], input=None)], None, "input", "expected a string, got int"),
    ("undecodable-bytes", [dict(GOOD[0], input=None), {"instruction": "q", "input": b"caf\xe9", "output": "a"},
                           dict(GOOD[1], input=None)],
     pa.schema([("instruction", pa.string()), ("input", pa.binary()), ("output", pa.string())]),
     "input", "expected a string, got bytes"),
    ("sharegpt-no-assistant", [
        {"conversations": [{"from": "human", "value": "q1"}, {"from": "gpt", "value": "a1"}]},
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "human", "value": "anyone?"}]},
        {"conversations": [{"from": "human", "value": "q2"}, {"from": "gpt", "value": "a2"}]},
    ], None, "conversations", "no assistant reply after the first user turn"),
    ("sharegpt-unknown-role", [
        {"conversations": [{"from": "human", "value": "q1"}, {"from": "gpt", "value": "a1"}]},
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "alien", "value": "x"}]},
        {"conversations": [{"from": "human", "value": "q2"}, {"from": "gpt", "value": "a2"}]},
    ], None, "conversations[1].from", f"unknown role 'alien' {_ROLES}"),
    ("messages-unknown-role", [
        {"messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}]},
        {"messages": [{"role": "critic", "content": "q"}, {"role": "assistant", "content": "a"}]},
        {"messages": [{"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]},
    ], None, "messages[0].role", f"unknown role 'critic' {_ROLES}"),
    ("messages-missing-content", [
        {"messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": None}]},
        {"messages": [{"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]},
    ], None, "messages[1].content", "missing"),
]


@pytest.mark.parametrize("case,records,schema,field,reason", PARQUET_CASES, ids=[c[0] for c in PARQUET_CASES])
def test_parquet_bad_rows(tmp_path, case, records, schema, field, reason):
    path = tmp_path / "pool.parquet"
    pq.write_table(pa.Table.from_pylist(records, schema=schema), path)
    with pytest.raises(DataError) as err:
        read_input(path)
    assert str(err.value) == f"pool.parquet row 2: field '{field}': {reason}"
    res = read_input(path, on_bad_row="quarantine")
    assert res.rows_read == 3 and res.frame.height == 2
    assert res.frame["_source"].to_list() == ["pool.parquet row 1", "pool.parquet row 3"]
    assert [(q["source"], q["reason"]) for q in res.quarantined] == [("pool.parquet row 2", f"field '{field}': {reason}")]


def test_unreadable_parquet(tmp_path):
    path = tmp_path / "pool.parquet"
    path.write_bytes(b"this is not parquet at all")
    with pytest.raises(DataError) as err:
        read_input(path)
    msg = str(err.value)
    assert msg.startswith("pool.parquet: unreadable parquet: ")


def test_bad_rows_in_a_folder_name_the_shard(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    write_text_container(shards / "a.jsonl", GOOD)
    write_text_container(shards / "b.jsonl", [{"instruction": "x", "output": "y"}, {"instruction": "x"}])
    with pytest.raises(DataError) as err:
        read_input(shards)
    assert str(err.value) == "shards/b.jsonl:2: field 'output': missing"
    res = read_input(shards, on_bad_row="quarantine")
    assert res.frame.height == 3
    assert res.quarantined[0]["source"] == "shards/b.jsonl:2"


def test_all_rows_bad_in_quarantine_mode_is_an_error(tmp_path):
    path = write_text_container(tmp_path / "pool.jsonl", [{"instruction": "q"}, {"output": "a"}])
    with pytest.raises(DataError) as err:
        read_input(path, on_bad_row="quarantine")
    msg = str(err.value)
    assert msg == ("input.path: none of the 2 rows in pool.jsonl is valid "
                   "(all quarantined; first: pool.jsonl:1: field 'output': missing)")


# ---------------------------------------------------------------------------------------------
# Stable ids and duplicates
# ---------------------------------------------------------------------------------------------
def test_same_content_same_id_across_files_and_formats(tmp_path):
    rows = [dict(r) for r in GOOD] + [{"instruction": "Third", "input": "", "output": "3"}]
    ids = []
    ids.append(read_input(write_text_container(tmp_path / "one.jsonl", rows)).frame["id"].to_list())
    ids.append(read_input(write_text_container(tmp_path / "two.json", list(reversed(rows)))).frame["id"].to_list()[::-1])
    ids.append(read_input(write_parquet(tmp_path / "three.parquet", rows)).frame["id"].to_list())
    # key order, extra fields and a missing (rather than empty) input do not change the id
    shuffled = [{"output": r["output"], "extra": k, "instruction": r["instruction"],
                 **({"input": r["input"]} if r["input"] else {})} for k, r in enumerate(rows)]
    ids.append(read_input(write_text_container(tmp_path / "four.jsonl", shuffled)).frame["id"].to_list())
    assert ids[0] == ids[1] == ids[2] == ids[3]
    assert len(set(ids[0])) == 3
    assert all(isinstance(i, str) and len(i) == 16 for i in ids[0])


def test_id_is_stable_across_processes(tmp_path):
    # a fixed row has a fixed id: a change here silently invalidates every user's score cache
    path = write_text_container(tmp_path / "pool.jsonl", [{"instruction": "a", "input": "", "output": "b"}])
    assert read_input(path).frame["id"][0] == "04b37b53745bff5a"


def test_chat_ids_agree_between_sharegpt_and_messages(tmp_path):
    sg = {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}
    ms = {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}
    a = read_input(write_text_container(tmp_path / "sg.jsonl", [sg])).frame["id"][0]
    b = read_input(write_parquet(tmp_path / "ms.parquet", [ms])).frame["id"][0]
    assert a == b


@pytest.mark.parametrize("variant", [
    {"instruction": "Name a colour.", "input": "", "output": "Red!"},
    {"instruction": "Name a colour. ", "input": "", "output": "Red."},
    {"instruction": "Name a colour.", "input": " ", "output": "Red."},
    {"instruction": "Name a colour.Red.", "input": "", "output": ""},
    {"instruction": "", "input": "Name a colour.", "output": "Red."},
    {"conversations": [{"from": "human", "value": "Name a colour."}, {"from": "gpt", "value": "Red."}]},
])
def test_different_content_different_id(tmp_path, variant):
    path = write_text_container(tmp_path / "pool.jsonl", [GOOD[0], variant])
    res = read_input(path)
    assert res.frame.height == 2
    assert res.frame["id"].n_unique() == 2
    assert res.duplicates == 0


def test_exact_duplicates_stored_once_with_copies(tmp_path):
    rows = [GOOD[0], GOOD[1], GOOD[0], GOOD[0], GOOD[1], {"instruction": "new", "output": "row"}]
    res = read_input(write_text_container(tmp_path / "pool.jsonl", rows))
    assert res.rows_read == 6
    assert res.frame.height == 3
    assert res.duplicates == 3
    assert res.frame["copies"].to_list() == [3, 2, 1]
    assert res.frame["_source"].to_list() == ["pool.jsonl:1", "pool.jsonl:2", "pool.jsonl:6"]  # first occurrence


def test_duplicate_pair_copies_two(tmp_path):
    res = read_input(write_text_container(tmp_path / "pool.jsonl", [GOOD[0], GOOD[0]]))
    assert res.frame.height == 1
    assert res.frame["copies"].to_list() == [2]
    assert res.duplicates == 1


def test_duplicates_across_shards(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    write_text_container(shards / "a.jsonl", [GOOD[0]])
    write_parquet(shards / "b.parquet", [GOOD[0], GOOD[1]])
    res = read_input(shards)
    assert res.frame.height == 2
    assert res.frame["copies"].to_list() == [2, 1]
    assert res.duplicates == 1


def test_files_read_apart_and_merged_in_any_completion_order_equal_one_sequential_read(tmp_path):
    """What the Ray engine does (one task per shard, merged on the driver) must count exactly as one read."""
    from concurrent.futures import ThreadPoolExecutor

    shards = tmp_path / "shards"
    shards.mkdir()
    extra = {"instruction": "only in c", "output": "x"}
    write_text_container(shards / "a.jsonl", [GOOD[1], b"{not json", GOOD[1]])
    write_parquet(shards / "b.parquet", [GOOD[0], GOOD[1], GOOD[0]])
    write_text_container(shards / "c.json", [extra, GOOD[0], {"instruction": 5, "output": "not a string"}])
    whole = read_input(shards, on_bad_row="quarantine")
    files = input_files(shards)
    with ThreadPoolExecutor(3) as pool:  # finishing in any order; merged in file order
        futures = [pool.submit(read_file, f, on_bad_row="quarantine", raise_errors=False) for f in reversed(files)]
        parts = [f.result() for f in futures][::-1]
    merged = merge_parts(parts, shards)
    assert merged.frame.equals(whole.frame)
    assert merged.frame["_source"].to_list() == ["shards/a.jsonl:1", "shards/b.parquet row 1", "shards/c.json:2"]
    assert merged.frame["copies"].to_list() == [3, 3, 1]
    assert (merged.rows_read, merged.duplicates, len(merged.quarantined)) == (9, 4, 2)
    assert (whole.rows_read, whole.duplicates, whole.quarantined, whole.files) == \
           (merged.rows_read, merged.duplicates, merged.quarantined, merged.files)


def test_a_part_that_stopped_on_a_bad_row_raises_the_first_files_error(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    write_text_container(shards / "a.jsonl", [GOOD[0]])
    write_text_container(shards / "b.jsonl", [GOOD[1], {"instruction": 3, "output": "x"}])
    write_text_container(shards / "c.jsonl", [b"{broken"])
    parts = [read_file(f, raise_errors=False) for f in input_files(shards)]
    assert parts[0].error is None and parts[1].error and parts[2].error
    with pytest.raises(DataError) as err:
        merge_parts(parts, shards)
    with pytest.raises(DataError) as sequential:
        read_input(shards)
    assert err.value.lines == sequential.value.lines and err.value.lines[0].startswith("shards/b.jsonl:2: ")


def test_limit_counts_rows_read(tmp_path):
    rows = [{"instruction": f"q{i}", "output": "a"} for i in range(10)]
    res = read_input(write_text_container(tmp_path / "pool.jsonl", rows), limit=4)
    assert res.rows_read == 4
    assert res.frame["instruction"].to_list() == ["q0", "q1", "q2", "q3"]


# ---------------------------------------------------------------------------------------------
# Empty and missing input
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,content", [
    ("empty.jsonl", b""),
    ("blank.jsonl", b"\n\n   \n"),
    ("empty.json", b""),
    ("empty-array.json", b"[]"),
    ("empty-array-spaced.json", b"  [ \n ]\n"),
])
def test_empty_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        read_input(path)
    assert str(err.value) == f"input.path: {name} has no rows"


def test_empty_parquet(tmp_path):
    path = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"instruction": pa.array([], pa.string()), "output": pa.array([], pa.string())}), path)
    with pytest.raises(DataError) as err:
        read_input(path)
    assert str(err.value) == "input.path: empty.parquet has no rows"


def test_missing_path(tmp_path):
    with pytest.raises(DataError) as err:
        read_input(tmp_path / "nope.jsonl")
    assert str(err.value) == "input.path: no such file or folder: nope.jsonl"
    assert len(err.value.lines) == 1


def test_folder_without_data_files(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "readme.txt").write_text("x")
    with pytest.raises(DataError) as err:
        read_input(tmp_path / "d")
    assert str(err.value) == ("input.path: folder d holds no .jsonl, .json, .parquet, .arrow, .csv, .tsv, .jsonl.gz, "
                              ".json.gz, .jsonl.zst, .json.zst files")


def test_unsupported_file_type(tmp_path):
    (tmp_path / "pool.xlsx").write_text("instruction,output\nq,a\n")
    with pytest.raises(DataError) as err:
        read_input(tmp_path / "pool.xlsx")
    assert str(err.value) == ("input.path: pool.xlsx: unsupported file type (use .jsonl, .json, .parquet, .arrow, "
                              ".csv, .tsv, .jsonl.gz, .json.gz, .jsonl.zst, .json.zst)")


@pytest.mark.parametrize("sep", ["\u2028", "\u2029", "\u0085"])
def test_jsonl_lines_end_at_newline_only(tmp_path, sep):
    """Line and paragraph separators are legal inside JSON strings: they split no row and shift no line number."""
    import json as _json

    rows = [{"instruction": f"one{sep}two", "input": "", "output": "a"}, {"instruction": "three", "output": "b"}]
    text = "\r\n".join(_json.dumps(r, ensure_ascii=False) for r in rows) + "\n{bad\n"
    path = tmp_path / "p.jsonl"
    path.write_text(text, encoding="utf-8", newline="")
    read = read_input(path, on_bad_row="quarantine")
    assert read.frame["instruction"].to_list() == [f"one{sep}two", "three"]
    assert [q["source"] for q in read.quarantined] == ["p.jsonl:3"]


@pytest.mark.parametrize("text,line", [
    ('[{"instruction": "a", "output": "b"}]\n[{"instruction": "c", "output": "d"}]\n', 2),
    ('[{"instruction": "a", "output": "b"}] trailing', 1),
    ('[]\n\n[{"instruction": "c", "output": "d"}]', 3),
])
def test_a_json_file_holds_one_array_and_nothing_after_it(tmp_path, text, line):
    path = tmp_path / "p.json"
    path.write_text(text, encoding="utf-8")
    for mode in ("error", "quarantine"):
        with pytest.raises(DataError) as info:
            read_input(path, on_bad_row=mode)
        assert str(info.value).endswith(f"p.json:{line}: invalid JSON: text after the end of the top-level array "
                                        f"(a .json file holds one array; write one record per line as .jsonl)")


def test_a_lone_surrogate_is_a_bad_row_in_both_modes(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"instruction": "ok", "output": "a"}\n{"instruction": "x\\ud800", "output": "a"}\n'
                    '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "\\udfff"}]}\n',
                    encoding="utf-8")
    read = read_input(path, on_bad_row="quarantine")
    assert read.frame["instruction"].to_list() == ["ok"]
    reasons = [(q["source"], q["reason"]) for q in read.quarantined]
    assert reasons == [("p.jsonl:2", "field 'instruction': lone surrogate '\\ud800' at character 2"),
                       ("p.jsonl:3", "field 'messages[1].content': lone surrogate '\\udfff' at character 1")]
    with pytest.raises(DataError, match=r"p\.jsonl:2: field 'instruction': lone surrogate"):
        read_input(path, on_bad_row="error")


def test_alpaca_system_and_history_are_part_of_the_row(tmp_path):
    base = {"instruction": "And in French?", "input": "", "output": "Bonjour"}
    rows = [base, {**base, "history": [["Say hello.", "Hello"]]}, {**base, "history": [["Say hi.", "Hi"]]},
            {**base, "system": "Be brief.", "history": [["Say hello.", "Hello"]]}]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    frame = read_input(path, on_bad_row="error").frame
    assert frame.height == 4 and frame["id"].n_unique() == 4  # rows differing only in history are not one row
    assert frame["n_turns"].to_list() == [1, 2, 2, 2]
    # a plain row keeps the id it always had
    assert frame["id"][0] == read_input(_write(tmp_path, "q.jsonl", [base]), on_bad_row="error").frame["id"][0]


@pytest.mark.parametrize("history,field,reason", [
    ("Say hello.", "history", "expected a list of [instruction, answer] pairs, got str"),
    ([["Say hello."]], "history[0]", "expected an [instruction, answer] pair, got list of 1"),
    ([["Say hello.", 5]], "history[0][1]", "expected a string, got int"),
])
def test_a_bad_alpaca_history_names_its_field(tmp_path, history, field, reason):
    path = _write(tmp_path, "p.jsonl", [{"instruction": "a", "output": "b", "history": history}])
    with pytest.raises(DataError) as info:
        read_input(path, on_bad_row="error")
    assert str(info.value).endswith(f"p.jsonl:1: field '{field}': {reason}")


def _write(tmp_path, name, rows):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


ROWS = [{"instruction": "Name a colour.", "input": "", "output": "Blue"},
        {"instruction": "Add 2 and 3.", "input": "", "output": "5"}]


@pytest.mark.parametrize("name", ["p.jsonl.gz", "p.json.gz", "p.jsonl.zst", "p.json.zst"])
def test_compressed_json_inputs_read_as_their_plain_form(tmp_path, name):
    import gzip

    import zstandard

    text = (json.dumps(ROWS) if ".json." in name else "".join(json.dumps(r) + "\n" for r in ROWS)) \
        + ("" if ".json." in name else '{"instruction": 5}\n')
    data = text.encode("utf-8")
    (tmp_path / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else zstandard.compress(data))
    read = read_input(tmp_path / name, on_bad_row="quarantine")
    assert read.frame["output"].to_list() == ["Blue", "5"]
    if ".jsonl." in name:  # line numbers are the decompressed text's
        assert [(q["source"], q["reason"]) for q in read.quarantined] == [
            (f"{name}:3", "field 'instruction': expected a string, got int")]
    (tmp_path / name).write_bytes(b"not compressed")
    with pytest.raises(DataError, match=rf"{re.escape(name)}: not a readable (gzip|zstd) file"):
        read_input(tmp_path / name)


@pytest.mark.parametrize("sep,name", [(",", "p.csv"), ("\t", "p.tsv")])
def test_csv_and_tsv_rows_with_a_multiline_field_and_a_bad_row(tmp_path, sep, name):
    text = (f"instruction{sep}input{sep}output\n" f"Name a colour.{sep}{sep}Blue\n"
            f'"Write two lines."{sep}{sep}"one\ntwo"\n' f"only{sep}two\n" f"Add 2 and 3.{sep}{sep}5\n")
    (tmp_path / name).write_text(text, encoding="utf-8")
    read = read_input(tmp_path / name, on_bad_row="quarantine")
    assert read.frame["output"].to_list() == ["Blue", "one\ntwo", "5"]
    assert [(q["source"], q["reason"]) for q in read.quarantined] == [(f"{name}:5", "2 fields where the header has 3")]
    with pytest.raises(DataError, match=rf"{re.escape(name)}:5: 2 fields where the header has 3"):
        read_input(tmp_path / name, on_bad_row="error")


def _hub_layout(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for split, n in (("train", 2), ("test", 1)):
        for i in range(n):
            pq.write_table(pa.table({"instruction": [f"{split} q{i}"], "output": ["a"]}),
                           data / f"{split}-{i:05d}-of-{n:05d}.parquet")
    return data


def test_a_folder_of_several_splits_needs_a_split_and_reads_only_that_one(tmp_path):
    data = _hub_layout(tmp_path)
    with pytest.raises(DataError) as info:
        read_input(data)
    assert str(info.value) == (
        f"input.path: {os.path.relpath(data)} holds the splits test, train (file or folder names such as "
        "train-00000-of-00002.parquet): set input.split to the one to read, so that no test rows are selected for "
        "training")
    assert sorted(read_input(data, split="train").frame["instruction"]) == ["train q0", "train q1"]
    assert read_input(data, split="test").frame["instruction"].to_list() == ["test q0"]
    with pytest.raises(DataError, match=r"input\.split: no file of split 'validation' in .*data \(splits found: "
                                        r"test, train\)"):
        read_input(data, split="validation")


def test_a_glob_reads_its_matches_in_name_order(tmp_path, monkeypatch):
    _hub_layout(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert read_input(Path("data/train-*.parquet")).frame["instruction"].to_list() == ["train q0", "train q1"]
    assert read_input(Path("data/*.parquet"), split="test").frame["instruction"].to_list() == ["test q0"]
    with pytest.raises(DataError, match=r"input\.path: no .* file matches data/dev-\*\.parquet"):
        read_input(Path("data/dev-*.parquet"))


def test_split_in_a_recipe(tmp_path):
    _hub_layout(tmp_path)
    (tmp_path / "r.toml").write_text('[input]\npath = "data"\nsplit = "train"\n[output]\ndir = "out"\n[[steps]]\n'
                                     'id = "all"\nselect = { plugin = "random", fraction = 1.0 }\n', encoding="utf-8")
    assert dqf.run(tmp_path / "r.toml").manifest["counts"]["rows_read"] == 2


def test_hugging_face_save_to_disk_folders_read_their_arrow_data(tmp_path):
    datasets = pytest.importorskip("datasets")  # in the test extra: CI has it
    rows = [{"instruction": "Name a colour.", "output": "Blue", "n": 1},
            {"instruction": "Add 2 and 3.", "output": "5", "n": 2}]
    one = datasets.Dataset.from_list(rows)
    one.save_to_disk(str(tmp_path / "one"))
    test = datasets.Dataset.from_list(rows[:1])
    datasets.DatasetDict({"train": one, "test": test}).save_to_disk(str(tmp_path / "dd"))
    read = read_input(tmp_path / "one", on_bad_row="error")  # state.json and dataset_info.json are not rows
    assert read.frame["output"].to_list() == ["Blue", "5"] and read.quarantined == []
    assert [json.loads(r)["n"] for r in read.frame["_raw"]] == [1, 2]
    with pytest.raises(DataError, match=r"holds the splits test, train .*set input\.split"):
        read_input(tmp_path / "dd")
    assert read_input(tmp_path / "dd", split="train").frame.height == 2
    assert read_input(tmp_path / "dd", split="test").frame["output"].to_list() == ["Blue"]
