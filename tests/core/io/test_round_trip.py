"""What goes in comes out: extra fields of any Arrow type, mixed types, NaN, every turn and tool call, through a real run,
and a run's outputs are all new or all old."""

from __future__ import annotations

import datetime as dt
import json
import math
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import dqf
from dqf.store.atomic import _host  # how temporaries name their host
from dqf.io.readers import read_input
from dqf.io.writers import output_file

RECIPE = """\
name = "rt"
[input]
path = "{path}"
on_bad_row = "quarantine"
{fields}
[output]
dir = "out"
format = "{fmt}"
[[steps]]
id = "all"
select = {{ plugin = "random", fraction = 1.0 }}
"""


def run(tmp_path, path, fmt, fields=""):
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE.format(path=path, fmt=fmt, fields=fields), encoding="utf-8")
    return dqf.run(recipe)


def selected(tmp_path, fmt):
    p = output_file(tmp_path / "out", fmt)
    if fmt == "parquet":
        return pq.read_table(p)
    if p.suffix == ".jsonl":
        return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines()]
    return json.loads(p.read_text(encoding="utf-8"))


WHEN = dt.datetime(2024, 5, 1, 12, 30, 15, 250000, tzinfo=dt.timezone.utc)


@pytest.fixture
def typed_parquet(tmp_path):
    table = pa.table({
        "instruction": ["a", "b"], "input": ["", ""], "output": ["x", "y"],
        "when": pa.array([WHEN, None], pa.timestamp("us", tz="UTC")),
        "day": pa.array([dt.date(2024, 5, 1), dt.date(2023, 1, 2)], pa.date32()),
        "blob": pa.array([b"\x00\xffraw", b""], pa.binary()),
        "score": pa.array([float("nan"), 1.5], pa.float64()),
    })
    pq.write_table(table, tmp_path / "typed.parquet")
    return "typed.parquet"


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
def test_parquet_extra_columns_of_any_type_reach_json_outputs_as_their_json_form(tmp_path, monkeypatch, typed_parquet,
                                                                                fmt):
    monkeypatch.chdir(tmp_path)
    run(tmp_path, typed_parquet, fmt)
    recs = sorted(selected(tmp_path, fmt), key=lambda r: r["instruction"])
    assert recs[0]["when"] == "2024-05-01T12:30:15.250000+00:00" and recs[1]["when"] is None
    assert [r["day"] for r in recs] == ["2024-05-01", "2023-01-02"]
    assert [r["blob"] for r in recs] == ["AP9yYXc=", ""]  # base64
    assert [r["score"] for r in recs] == [None, 1.5]  # JSON has no NaN: null, never a bare NaN
    text = (tmp_path / "out" / f"selected.{fmt}").read_text(encoding="utf-8")
    assert "NaN" not in text and "__dqf__" not in text


def test_parquet_extra_columns_of_any_type_survive_as_themselves_in_parquet(tmp_path, monkeypatch, typed_parquet):
    monkeypatch.chdir(tmp_path)
    run(tmp_path, typed_parquet, "parquet")
    t = selected(tmp_path, "parquet").sort_by("instruction")
    assert t.schema.field("when").type == pa.timestamp("us", tz="UTC")
    assert t.schema.field("day").type == pa.date32() and t.schema.field("blob").type == pa.binary()
    got = t.to_pylist()
    assert got[0]["when"] == WHEN and got[1]["when"] is None
    assert [r["blob"] for r in got] == [b"\x00\xffraw", b""]
    assert math.isnan(got[0]["score"]) and got[1]["score"] == 1.5


def test_nan_in_a_json_input_is_written_back_as_valid_json(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.jsonl").write_text('{"instruction": "a", "output": "x", "w": NaN, "v": [Infinity, 1]}\n',
                                      encoding="utf-8")
    run(tmp_path, "p.jsonl", "jsonl")
    line = (tmp_path / "out" / "selected.jsonl").read_text(encoding="utf-8").strip()
    assert json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} written")) == \
        {"instruction": "a", "output": "x", "w": None, "v": [None, 1]}


def test_mixed_types_in_a_field_are_written_to_parquet_as_json_text_and_nothing_is_dropped(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = [{"instruction": "a", "output": "x", "id": 5},
            {"instruction": "b", "output": "y", "id": "x7", "only_here": True},
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]},
                          {"role": "assistant", "content": "yo"}], "id": [1, 2]}]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    res = run(tmp_path, "p.jsonl", "parquet")
    t = selected(tmp_path, "parquet")
    assert t.num_rows == 3 and set(t.column_names) == {"instruction", "output", "id", "only_here", "messages"}
    assert sorted(v for v in t["id"].to_pylist()) == sorted(['5', '"x7"', '[1, 2]'])
    assert sorted(t["only_here"].to_pylist(), key=str) == [None, None, True]
    # a content that is a list of parts in one message and a string in the next: no one Arrow type holds both
    assert json.loads(t.schema.metadata[b"dqf.json_fields"]) == ["id", "messages"]
    assert res.manifest["output"]["json_fields"] == ["id", "messages"]
    [msgs] = [json.loads(m) for m in t["messages"].to_pylist() if m is not None]
    assert msgs == rows[2]["messages"]


def test_a_failed_write_leaves_every_output_of_the_previous_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.jsonl").write_text('{"instruction": "a", "output": "x"}\n', encoding="utf-8")
    run(tmp_path, "p.jsonl", "parquet")
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    (tmp_path / "p.jsonl").write_text('{"instruction": "b", "output": "y"}\n', encoding="utf-8")

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq, "write_table", broken)  # the selection's writer fails after rows.parquet is written
    with pytest.raises(OSError):
        run(tmp_path, "p.jsonl", "parquet")
    after = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    assert after == before  # rows.parquet was written before the failure, and still is the old one


def test_dead_writers_temporaries_in_the_run_dir_are_swept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.jsonl").write_text('{"instruction": "a", "output": "x"}\n', encoding="utf-8")
    (tmp_path / "out").mkdir()
    dead = tmp_path / "out" / f".selected.jsonl.{_host()}-999999999.abc123.tmp"
    dead.write_bytes(b"x" * 128_000)
    alive = tmp_path / "out" / f".selected.jsonl.{_host()}-{os.getpid()}.def456.tmp"
    alive.write_bytes(b"y")
    run(tmp_path, "p.jsonl", "jsonl")
    assert not dead.exists() and alive.exists()  # a live writer's temporary is left alone


CHAT = {"id": "c1", "tools": [{"type": "function", "function": {"name": "add"}}], "chat": [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": [{"type": "text", "text": "Add 2 "}, {"type": "text", "text": "and 3."}]},
    {"role": "assistant", "content": None, "tool_calls": [{"id": "t1", "type": "function",
                                                            "function": {"name": "add", "arguments": "{\"a\":2}"}}]},
    {"role": "tool", "content": "5", "tool_call_id": "t1"},
    {"role": "assistant", "content": "It is 5."},
    {"role": "user", "content": "Thanks."},
    {"role": "assistant", "content": "You're welcome."}]}


def test_sharegpt_output_from_renamed_messages_keeps_every_turn_part_and_tool_call(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.jsonl").write_text(json.dumps(CHAT) + "\n", encoding="utf-8")
    res = run(tmp_path, "p.jsonl", "sharegpt", fields='fields = { messages = "chat" }')
    assert res.manifest["counts"]["quarantined"] == 0  # a tool-call turn (content null) is a valid message
    [rec] = selected(tmp_path, "sharegpt")
    assert "chat" not in rec and rec["id"] == "c1" and rec["tools"] == CHAT["tools"]
    conv = rec["conversations"]
    assert [t["from"] for t in conv] == ["system", "human", "function_call", "observation", "gpt", "human", "gpt"]
    assert conv[1]["value"] == "Add 2 and 3."  # every text part, in order
    assert json.loads(conv[2]["value"]) == CHAT["chat"][2]["tool_calls"]
    assert [t["value"] for t in conv[3:]] == ["5", "It is 5.", "Thanks.", "You're welcome."]


def test_a_tool_call_turn_reads_as_its_call(tmp_path):
    (tmp_path / "p.jsonl").write_text(json.dumps({"messages": CHAT["chat"]}) + "\n", encoding="utf-8")
    read = read_input(tmp_path / "p.jsonl", on_bad_row="error")
    assert read.frame["output"].to_list() == [json.dumps(CHAT["chat"][2]["tool_calls"], sort_keys=True)]
    bad = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}]}
    (tmp_path / "q.jsonl").write_text(json.dumps(bad) + "\n", encoding="utf-8")
    with pytest.raises(dqf.DataError, match=r"q\.jsonl:1: field 'messages\[1\]\.content': missing"):
        read_input(tmp_path / "q.jsonl", on_bad_row="error")


def test_messages_output_from_alpaca_sharegpt_and_messages_rows_reads_back_with_every_turn(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = [{"instruction": "Add 2 and 3.", "input": "Be brief.", "output": "5", "tag": "a"},
            {"id": "s1", "conversations": [{"from": "system", "value": "Be kind."}, {"from": "human", "value": "Hi"},
                                           {"from": "function_call", "value": '[{"name": "wave"}]'},
                                           {"from": "observation", "value": "waved"},
                                           {"from": "gpt", "value": "Hello!"}]},
            {"messages": CHAT["chat"], "tools": CHAT["tools"]}]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    res = run(tmp_path, "p.jsonl", "messages")
    assert res.manifest["counts"]["quarantined"] == 0
    recs = sorted(selected(tmp_path, "messages"), key=lambda r: len(r["messages"]))
    alpaca, sharegpt, chat = recs
    assert alpaca["messages"] == [{"role": "user", "content": "Add 2 and 3.\n\nBe brief."},
                                  {"role": "assistant", "content": "5"}] and alpaca["tag"] == "a"
    assert "conversations" not in sharegpt and sharegpt["id"] == "s1"
    assert [m["role"] for m in sharegpt["messages"]] == ["system", "user", "assistant", "tool", "assistant"]
    assert sharegpt["messages"][2] == {"role": "assistant", "content": None, "tool_calls": [{"name": "wave"}]}
    assert [m["role"] for m in chat["messages"]] == [m["role"] for m in CHAT["chat"]]
    assert chat["messages"][1]["content"] == "Add 2 and 3." and chat["messages"][2]["tool_calls"] == \
        CHAT["chat"][2]["tool_calls"] and chat["messages"][3]["tool_call_id"] == "t1" and chat["tools"] == CHAT["tools"]
    # one Arrow type for loaders: text, or null for a turn that only calls tools
    assert all(isinstance(m["content"], str) or m.get("tool_calls") for r in recs for m in r["messages"])
    # dqf reads its own output back as the same conversations
    back = read_input(tmp_path / "out" / "selected.jsonl", on_bad_row="error").frame
    assert back.height == 3 and sorted(back["output"].to_list()) == sorted(res.selected["output"].to_list())


@pytest.mark.parametrize("fmt", ["sharegpt", "messages"])
def test_an_alpaca_rows_system_and_history_become_its_first_turns(tmp_path, monkeypatch, fmt):
    monkeypatch.chdir(tmp_path)
    row = {"instruction": "And in French?", "input": "", "output": "Bonjour", "system": "Be brief.",
           "history": [["Say hello.", "Hello"]], "tag": 1}
    (tmp_path / "p.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    run(tmp_path, "p.jsonl", fmt)
    [rec] = selected(tmp_path, fmt)
    assert "history" not in rec and "system" not in rec and rec["tag"] == 1
    if fmt == "sharegpt":
        assert [(t["from"], t["value"]) for t in rec["conversations"]] == [
            ("system", "Be brief."), ("human", "Say hello."), ("gpt", "Hello"), ("human", "And in French?"),
            ("gpt", "Bonjour")]
    else:
        assert [(m["role"], m["content"]) for m in rec["messages"]] == [
            ("system", "Be brief."), ("user", "Say hello."), ("assistant", "Hello"), ("user", "And in French?"),
            ("assistant", "Bonjour")]


@pytest.mark.parametrize("fmt", ["sharegpt", "messages"])
def test_conversations_written_with_role_and_content_keys_are_read_and_converted(tmp_path, monkeypatch, fmt):
    monkeypatch.chdir(tmp_path)
    row = {"conversations": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                             {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"},
                             {"role": "assistant", "content": "Bye!"}]}
    (tmp_path / "p.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    res = run(tmp_path, "p.jsonl", fmt)
    assert res.manifest["counts"]["quarantined"] == 0  # every row was quarantined before
    assert res.selected["instruction"].to_list() == ["Hi"] and res.selected["n_turns"].to_list() == [2]
    [rec] = selected(tmp_path, fmt)
    if fmt == "sharegpt":
        assert [(t["from"], t["value"]) for t in rec["conversations"]] == [
            ("system", "Be brief."), ("human", "Hi"), ("gpt", "Hello!"), ("human", "Bye"), ("gpt", "Bye!")]
    else:
        assert rec["messages"] == row["conversations"] and "conversations" not in rec
