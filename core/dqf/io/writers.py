"""Writes the selected rows in the format a recipe asks for, keeping every original field and turn."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from dqf.io.rows import _ROLE, _content_text, _format_of, _sharegpt_keys, alpaca_context
from dqf.io.values import has_typed, json_form, native, to_raw

OUTPUT_FORMATS = {"jsonl": "jsonl", "json": "json", "parquet": "parquet", "sharegpt": "json", "messages": "jsonl"}
#: ShareGPT role names as LLaMA-Factory reads them ("function_call": an assistant turn that calls a tool).
_SHAREGPT_ROLE = {"user": "human", "assistant": "gpt", "system": "system", "tool": "observation",
                  "function": "observation"}


def output_file(run_dir: Path, fmt: str) -> Path:
    return run_dir / f"selected.{OUTPUT_FORMATS[fmt]}"


def selected_files(run_dir: Path) -> list[Path]:
    """Every ``selected.*`` a run of any output format may have left in ``run_dir``."""
    return [run_dir / f"selected.{ext}" for ext in sorted(set(OUTPUT_FORMATS.values()))]


def to_json_text(record: Any) -> str:
    """``record`` as one line of valid JSON (times as ISO text, bytes as base64, NaN as null)."""
    raw = to_raw(record)
    return json.dumps(json_form(json.loads(raw)), ensure_ascii=False) if has_typed(raw) else raw


def _message_value(m: Mapping) -> tuple[str, str]:
    """``(sharegpt role, value)`` of one OpenAI message: text parts joined, a tool call as its JSON."""
    role = str(m.get("role", "")).lower()
    calls = m.get("tool_calls") or m.get("function_call")
    if m.get("content") in (None, "", []) and calls:
        return "function_call", json.dumps(calls, ensure_ascii=False)
    return _SHAREGPT_ROLE.get(role, role), _content_text(m.get("content") or "", "content")


def _alpaca_turns(rec: Mapping, canon: dict[str, Any]) -> list[tuple[str, str]]:
    """``(role, text)`` of an Alpaca row's turns: its system and history turns, then the instruction (plus a blank
    line and the input if any) and the output."""
    user = canon["instruction"] + (f"\n\n{canon['input']}" if canon["input"] else "")
    return [*alpaca_context(rec), ("user", user), ("assistant", canon["output"])]


def _openai_message(m: Mapping) -> dict[str, Any]:
    """One OpenAI message with its content as text (text parts joined) and its tool fields kept; a turn that only
    calls tools keeps ``content: null``, as the API writes it."""
    role = str(m.get("role", "")).lower()
    calls_only = m.get("content") in (None, "", []) and m.get("tool_calls")
    out = {"role": _ROLE.get(role, role),
           "content": None if calls_only else _content_text(m.get("content") or "", "content")}
    for key in ("tool_calls", "tool_call_id", "name"):
        if m.get(key) is not None:
            out[key] = m[key]
    return out


def _sharegpt_message(turn: Mapping) -> dict[str, Any]:
    """One ShareGPT turn as an OpenAI message; a ``function_call`` turn whose value is JSON keeps it as the calls."""
    who, value = str(turn.get("from", "")).lower(), _content_text(turn.get("value") or "", "value")
    if who == "function_call":
        try:
            calls = json.loads(value)
        except ValueError:
            calls = None
        if isinstance(calls, list):
            return {"role": "assistant", "content": None, "tool_calls": calls}
    return {"role": _ROLE.get(who, who), "content": value}


def _to_messages(rec: dict[str, Any], canon: dict[str, Any], fields: Mapping[str, str] | None) -> dict[str, Any]:
    """Every row as ``messages`` (roles system/user/assistant/tool, content as text), the form TRL and axolotl's
    ``chat_template`` read; the conversation field (an Alpaca row's ``system`` and ``history``) is replaced, every
    other field kept."""
    fmt, f = _format_of(rec, "auto", fields)
    if fmt == "messages":
        out = {k: v for k, v in rec.items() if k != f["messages"]}
        out["messages"] = [_openai_message(m) for m in rec[f["messages"]]]
        return out
    if fmt == "sharegpt":
        key = f["conversations"]
        out = {k: v for k, v in rec.items() if k != key}
        as_messages = _sharegpt_keys(rec, key) == ("role", "content")  # an export's role/content turns
        out["messages"] = [_openai_message(t) if as_messages else _sharegpt_message(t) for t in rec[key]]
        return out
    out = {k: v for k, v in rec.items() if k not in ("system", "history")}
    out["messages"] = [{"role": role, "content": text} for role, text in _alpaca_turns(rec, canon)]
    return out


def _to_sharegpt(rec: dict[str, Any], canon: dict[str, Any], fields: Mapping[str, str] | None) -> dict[str, Any]:
    """Chat rows keep every turn, under ``conversations`` whatever the input called it; Alpaca rows become their
    system and history turns, then one human turn and one gpt turn. ShareGPT values are strings: content parts are
    joined (text parts only)."""
    fmt, f = _format_of(rec, "auto", fields)
    if fmt == "sharegpt":
        key = f["conversations"]
        out = {k: v for k, v in rec.items() if k != key}
        if _sharegpt_keys(rec, key) == ("role", "content"):  # an export's role/content turns: ShareGPT's keys
            out["conversations"] = [dict(zip(("from", "value"), _message_value(t))) for t in rec[key]]
        else:
            out["conversations"] = rec[key]
        return out
    if fmt == "messages":
        out = {k: v for k, v in rec.items() if k != f["messages"]}
        out["conversations"] = [dict(zip(("from", "value"), _message_value(m))) for m in rec[f["messages"]]]
        return out
    out = {k: v for k, v in rec.items() if k not in ("system", "history")}
    out["conversations"] = [{"from": _SHAREGPT_ROLE[role], "value": text} for role, text in _alpaca_turns(rec, canon)]
    return out


def records_table(records: list[dict]):
    """An Arrow table of ``records`` whose schema covers every field of every record (missing: null).

    A field whose values no single Arrow type holds (``"id": 5`` beside ``"id": "x"``, a
    ``content`` that is a string in one row and a list of parts in another) is written as JSON
    text; the names of such fields are returned, and kept in the file's metadata under ``dqf.json_fields``.
    """
    import pyarrow as pa

    names = list(dict.fromkeys(k for r in records for k in r))
    arrays, as_json = {}, []
    for name in names:
        values = [r.get(name) for r in records]
        try:
            arrays[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, OverflowError):
            arrays[name] = pa.array([None if v is None else to_json_text(v) for v in values], pa.string())
            as_json.append(name)
    table = pa.table(arrays) if names else pa.table({})
    if as_json:
        table = table.replace_schema_metadata({"dqf.json_fields": json.dumps(as_json)})
    return table, as_json


def write_selected(frame, path: Path, fmt: str, fields: Mapping[str, str] | None = None) -> dict:
    """Write ``frame`` (``_raw``, the original record as JSON, and the canonical columns) to ``path`` as ``fmt``.

    Returns notes for the manifest (``json_fields``: parquet fields written as JSON text).
    """
    raws = frame["_raw"].to_list()
    notes: dict = {}
    if fmt == "jsonl":
        with open(path, "w", encoding="utf-8") as fh:
            for r in raws:
                fh.write(json.dumps(json_form(json.loads(r)), ensure_ascii=False) if has_typed(r) else r)
                fh.write("\n")
    elif fmt == "messages":
        records = [json_form(json.loads(r)) if has_typed(r) else json.loads(r) for r in raws]
        canon = frame.select("instruction", "input", "output").to_dicts()
        write_jsonl([_to_messages(r, c, fields) for r, c in zip(records, canon)], path)
    elif fmt in ("json", "sharegpt"):
        records = [json_form(json.loads(r)) if has_typed(r) else json.loads(r) for r in raws]
        if fmt == "sharegpt":
            canon = frame.select("instruction", "input", "output").to_dicts()
            records = [_to_sharegpt(r, c, fields) for r, c in zip(records, canon)]
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(records, fh, ensure_ascii=False, indent=2)
            fh.write("\n")
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        table, as_json = records_table([native(json.loads(r)) if has_typed(r) else json.loads(r) for r in raws])
        pq.write_table(table, path)
        if as_json:
            notes["json_fields"] = as_json
    else:
        raise ValueError(f"unknown output format {fmt!r}")
    return notes


def write_jsonl(records, path: Path) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(to_json_text(rec))
            fh.write("\n")
