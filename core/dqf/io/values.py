"""How a record's values that JSON cannot hold (a parquet timestamp or binary column, a NaN float) travel through the
row's ``_raw`` JSON to the output: as their JSON form in JSON outputs, as themselves in parquet."""

from __future__ import annotations

import base64
import datetime as _dt
import decimal
import json
import math
from typing import Any

#: The key of a stand-in object ``{"__dqf__": kind, "value": json form}`` inside ``_raw``.
TYPED = "__dqf__"
_MARK = f'"{TYPED}"'


def _typed(kind: str, value: Any) -> dict:
    return {TYPED: kind, "value": value}


def _encode(v: Any) -> Any:
    """``json.dumps``'s ``default``: the stand-in of a value JSON has no type for."""
    if isinstance(v, _dt.datetime):
        return _typed("datetime", v.isoformat())
    if isinstance(v, _dt.date):
        return _typed("date", v.isoformat())
    if isinstance(v, _dt.time):
        return _typed("time", v.isoformat())
    if isinstance(v, _dt.timedelta):
        return _typed("duration", v.total_seconds())
    if isinstance(v, (bytes, bytearray, memoryview)):
        return _typed("bytes", base64.b64encode(bytes(v)).decode("ascii"))
    if isinstance(v, decimal.Decimal):
        return _typed("decimal", str(v))
    if isinstance(v, float):  # only reached from _finite(): NaN and the infinities
        return _typed("float", repr(v))
    if isinstance(v, (set, frozenset, tuple)):
        return list(v)
    raise TypeError(f"a value of type {type(v).__name__} cannot be kept")


def _finite(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return _encode(v)
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite(x) for x in v]
    return v


def to_raw(record: Any) -> str:
    """``record`` as the JSON text kept in ``_raw``; values JSON cannot hold become stand-ins."""
    try:
        return json.dumps(record, ensure_ascii=False, default=_encode, allow_nan=False)
    except ValueError:  # a NaN or an infinity somewhere: rare, so only then is the record walked
        return json.dumps(_finite(record), ensure_ascii=False, default=_encode, allow_nan=False)


def parse_constant(name: str) -> dict:
    """For ``json.loads``: the bare ``NaN``/``Infinity`` Python writes are read as stand-ins, not floats."""
    return _typed("float", {"NaN": "nan", "Infinity": "inf", "-Infinity": "-inf"}[name])


def has_typed(raw: str) -> bool:
    return _MARK in raw


def _walk(v: Any, leaf) -> Any:
    if isinstance(v, dict):
        if TYPED in v and len(v) == 2 and "value" in v:
            return leaf(v[TYPED], v["value"])
        return {k: _walk(x, leaf) for k, x in v.items()}
    if isinstance(v, list):
        return [_walk(x, leaf) for x in v]
    return v


def _json_form(kind: str, value: Any) -> Any:
    return None if kind == "float" else value  # JSON has no NaN: null, as JavaScript's JSON.stringify writes it


def _native(kind: str, value: Any) -> Any:
    if kind == "datetime":
        return _dt.datetime.fromisoformat(value)
    if kind == "date":
        return _dt.date.fromisoformat(value)
    if kind == "time":
        return _dt.time.fromisoformat(value)
    if kind == "duration":
        return _dt.timedelta(seconds=value)
    if kind == "bytes":
        return base64.b64decode(value)
    if kind == "decimal":
        return decimal.Decimal(value)
    if kind == "float":
        return float(value)
    return value


def json_form(record: Any) -> Any:
    """``record`` (parsed from ``_raw``) with every stand-in replaced by its JSON form: ISO 8601 text for times,
    base64 for bytes, text for decimals, seconds for durations, null for NaN and the infinities."""
    return _walk(record, _json_form)


def native(record: Any) -> Any:
    """``record`` (parsed from ``_raw``) with every stand-in replaced by the Python value it stood for."""
    return _walk(record, _native)
