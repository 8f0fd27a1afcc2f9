"""Writes the selected rows in the format a recipe asks for, keeping every original field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dqf.store.atomic import atomic_open, atomic_path
from dqf.io.rows import _content_text

OUTPUT_FORMATS = {"jsonl": "jsonl", "json": "json", "parquet": "parquet", "sharegpt": "json"}


def output_file(run_dir: Path, fmt: str) -> Path:
    return run_dir / f"selected.{OUTPUT_FORMATS[fmt]}"


def _to_sharegpt(rec: dict[str, Any], canon: dict[str, Any]) -> dict[str, Any]:
    """Chat rows keep their turns; Alpaca rows become one human turn and one gpt turn."""
    if "conversations" in rec:
        return rec
    out = {k: v for k, v in rec.items() if k not in ("messages",)}
    if "messages" in rec:
        roles = {"user": "human", "assistant": "gpt", "system": "system", "tool": "observation"}
        out["conversations"] = [
            {"from": roles.get(m.get("role"), m.get("role")), "value": _content_text(m.get("content"), "content")}
            for m in rec["messages"]
        ]
        return out
    prompt = canon["instruction"] + (f"\n\n{canon['input']}" if canon["input"] else "")
    out["conversations"] = [{"from": "human", "value": prompt}, {"from": "gpt", "value": canon["output"]}]
    return out


def write_selected(frame, run_dir: Path, fmt: str) -> Path:
    """``frame`` has ``_raw`` (the original record as JSON) and the canonical columns."""
    path = output_file(run_dir, fmt)
    raws = frame["_raw"].to_list()
    if fmt == "jsonl":
        with atomic_open(path) as fh:
            for r in raws:
                fh.write(r)
                fh.write("\n")
    elif fmt in ("json", "sharegpt"):
        records = [json.loads(r) for r in raws]
        if fmt == "sharegpt":
            canon = frame.select("instruction", "input", "output").to_dicts()
            records = [_to_sharegpt(r, c) for r, c in zip(records, canon)]
        with atomic_open(path) as fh:
            json.dump(records, fh, ensure_ascii=False, indent=2)
            fh.write("\n")
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist([json.loads(r) for r in raws])
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
    else:
        raise ValueError(f"unknown output format {fmt!r}")
    return path


def write_jsonl(records, path: Path) -> None:
    with atomic_open(path) as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False))
            fh.write("\n")
