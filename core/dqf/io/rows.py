"""The canonical view of a row (instruction, input, output) and its stable content-hash id."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Mapping

from dqf.lm.prompts import question

FORMATS = ("auto", "alpaca", "sharegpt", "messages")

_ROLE = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant", "bard": "assistant",
    "bing": "assistant", "model": "assistant", "function_call": "assistant",
    "system": "system",
    "observation": "tool", "tool": "tool", "function": "tool", "ipython": "tool",
}


class BadRow(Exception):
    """A row that cannot be read; ``field`` names the offending field when there is one."""

    def __init__(self, reason: str, field: str | None = None):
        self.reason = reason
        self.field = field
        super().__init__(f"field {field!r}: {reason}" if field else reason)


@dataclass(frozen=True)
class Canonical:
    id: str
    instruction: str
    input: str
    output: str
    n_turns: int
    kind: str  # "alpaca" | "chat"


def row_id(content: Any) -> str:
    """Stable id of a row: the same content gives the same id in every run and every file."""
    blob = json.dumps(content, ensure_ascii=False, separators=(",", ":"))
    return hashlib.blake2b(blob.encode("utf-8"), digest_size=8).hexdigest()


def _typename(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _valid_text(v: str, field: str) -> str:
    """``v``, unless it holds a lone surrogate (``"\\ud800"`` in JSON), which no UTF-8 output can write."""
    if not v.isascii():
        try:
            v.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise BadRow(f"lone surrogate {v[exc.start]!r} at character {exc.start + 1}", field) from None
    return v


def _text(record: Mapping, key: str, *, required: bool) -> str:
    if key not in record or record[key] is None:
        if required:
            raise BadRow("missing", key)
        return ""
    v = record[key]
    if not isinstance(v, str):
        raise BadRow(f"expected a string, got {_typename(v)}", key)
    return _valid_text(v, key)


def _content_text(v: Any, field: str) -> str:
    if isinstance(v, str):
        return _valid_text(v, field)
    if isinstance(v, list):  # OpenAI content parts: keep the text parts
        parts = [p.get("text", "") for p in v if isinstance(p, dict) and p.get("type", "text") == "text"]
        return _valid_text("".join(parts), field)
    raise BadRow(f"expected a string, got {_typename(v)}", field)


def alpaca_context(record: Mapping) -> list[tuple[str, str]]:
    """The turns before an Alpaca row's own exchange, as LLaMA-Factory's Alpaca format writes them: ``system`` (a
    string) and ``history`` (a list of ``[instruction, answer]`` pairs), as ``(role, text)``. Empty for a plain row."""
    out = []
    system = _text(record, "system", required=False)
    if system:
        out.append(("system", system))
    history = record.get("history")
    if history is None:
        return out
    if not isinstance(history, list):
        raise BadRow(f"expected a list of [instruction, answer] pairs, got {_typename(history)}", "history")
    for i, pair in enumerate(history):
        if not (isinstance(pair, list) and len(pair) == 2):
            raise BadRow(f"expected an [instruction, answer] pair, got {_typename(pair)}"
                         + (f" of {len(pair)}" if isinstance(pair, list) else ""), f"history[{i}]")
        for j, (role, text) in enumerate(zip(("user", "assistant"), pair)):
            if not isinstance(text, str):
                raise BadRow(f"expected a string, got {_typename(text)}", f"history[{i}][{j}]")
            out.append((role, _valid_text(text, f"history[{i}][{j}]")))
    return out


def _sharegpt_keys(record: Mapping, key: str) -> tuple[str, str]:
    """The role and text keys of a ``conversations`` list: ShareGPT's ``from``/``value``, or ``role``/``content`` as
    many exports write it (decided by the first turn that has either)."""
    turns = record.get(key)
    for t in turns if isinstance(turns, list) else ():
        if isinstance(t, Mapping) and ("from" in t or "role" in t):
            return ("from", "value") if "from" in t else ("role", "content")
    return "from", "value"


def _turns(record: Mapping, key: str, role_key: str, text_key: str) -> list[tuple[str, str]]:
    turns = record.get(key)
    if not isinstance(turns, list):
        raise BadRow("missing" if turns is None else f"expected a list of turns, got {_typename(turns)}", key)
    out = []
    for i, t in enumerate(turns):
        where = f"{key}[{i}]"
        if not isinstance(t, Mapping):
            raise BadRow(f"expected an object, got {_typename(t)}", where)
        role = t.get(role_key)
        if not isinstance(role, str):
            raise BadRow("missing" if role is None else f"expected a string, got {_typename(role)}", f"{where}.{role_key}")
        canon = _ROLE.get(role.lower())
        if canon is None:
            raise BadRow(f"unknown role {role!r} (expected one of {', '.join(sorted(_ROLE))})", f"{where}.{role_key}")
        if t.get(text_key) is None:
            calls = t.get("tool_calls") or t.get("function_call")
            if calls and canon == "assistant":  # an OpenAI tool-call turn: its text is the call, as JSON
                out.append((canon, _valid_text(json.dumps(calls, ensure_ascii=False, sort_keys=True), f"{where}.tool_calls")))
                continue
            raise BadRow("missing", f"{where}.{text_key}")
        out.append((canon, _content_text(t[text_key], f"{where}.{text_key}")))
    return out


def _format_of(record: Any, fmt: str, fields: Mapping[str, str] | None) -> tuple[str, dict[str, str]]:
    """The concrete format of ``record`` (``auto`` resolved) and the field names to read."""
    if not isinstance(record, Mapping):
        raise BadRow(f"expected a JSON object, got {_typename(record)}")
    f = {"instruction": "instruction", "input": "input", "output": "output",
         "conversations": "conversations", "messages": "messages", **(fields or {})}
    if fmt == "auto":
        if f["conversations"] in record:
            fmt = "sharegpt"
        elif f["messages"] in record:
            fmt = "messages"
        else:
            fmt = "alpaca"
    return fmt, f


def conversation(record: Any, fmt: str = "auto", fields: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """Every turn of ``record`` as ``(role, text)``, roles canonical (user, assistant, system, tool).

    A chat record gives all its turns in order. An alpaca record gives its ``system`` and
    ``history`` turns (:func:`alpaca_context`), then the user turn (the instruction, then a
    newline and the input when there is one, as ``row_texts(rows, "prompt")``) and the assistant
    turn (the output). Raises :class:`BadRow` like :func:`canonicalize`.
    """
    fmt, f = _format_of(record, fmt, fields)
    if fmt == "alpaca":
        instruction = _text(record, f["instruction"], required=True)
        inp = _text(record, f["input"], required=False)
        return [*alpaca_context(record), ("user", question(instruction, inp)),
                ("assistant", _text(record, f["output"], required=True))]
    if fmt == "sharegpt":
        return _turns(record, f["conversations"], *_sharegpt_keys(record, f["conversations"]))
    if fmt == "messages":
        return _turns(record, f["messages"], "role", "content")
    raise ValueError(f"unknown format {fmt!r}")


def canonicalize(record: Any, fmt: str = "auto", fields: Mapping[str, str] | None = None) -> Canonical:
    """Map one input record to its canonical view, raising :class:`BadRow` if it does not fit ``fmt``.

    Multi-turn rows keep every turn in the original record; the canonical view is the first
    user turn (instruction) and the assistant reply that follows it (output).
    """
    fmt, f = _format_of(record, fmt, fields)
    if fmt == "alpaca":
        instruction = _text(record, f["instruction"], required=True)
        inp = _text(record, f["input"], required=False)
        output = _text(record, f["output"], required=True)
        context = alpaca_context(record)
        # a plain row keeps the id it always had; system and history are part of a row's content
        content = [instruction, inp, output] + ([[list(t) for t in context]] if context else [])
        n_user = 1 + sum(1 for r, _ in context if r == "user")
        return Canonical(row_id(content), instruction, inp, output, n_user, "alpaca")
    if fmt == "sharegpt":
        turns = _turns(record, f["conversations"], *_sharegpt_keys(record, f["conversations"]))
        key = f["conversations"]
    elif fmt == "messages":
        turns = _turns(record, f["messages"], "role", "content")
        key = f["messages"]
    else:
        raise ValueError(f"unknown format {fmt!r}")
    first_user = next((i for i, (r, _) in enumerate(turns) if r == "user"), None)
    if first_user is None:
        raise BadRow("no user turn", key)
    reply = next((t for r, t in turns[first_user + 1:] if r == "assistant"), None)
    if reply is None:
        raise BadRow("no assistant reply after the first user turn", key)
    n_user = sum(1 for r, _ in turns if r == "user")
    return Canonical(row_id([list(t) for t in turns]), turns[first_user][1], "", reply, n_user, "chat")
