"""Label sets to check scores against: label files read, their rows matched to the pool by id or by content."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dqf.errors import DataError
from dqf.io.readers import display_path
from dqf.io.rows import BadRow, canonicalize

if TYPE_CHECKING:
    from dqf.compare.pool import Pool

#: Fields that identify a row rather than label it.
KEY_FIELDS = {"id", "instruction", "input", "output", "conversations", "messages"}


@dataclass
class LabelSet:
    """One label over the pool: ``values`` in pool order, NaN where the row has no label.

    A file with label columns gives one set per column (rows it does not list are unlabelled). A
    file of rows only (a published selection such as AlpaGasus' ``claude_t45.json``) gives one
    binary set, membership: 1 for pool rows in the file, 0 for every other pool row.
    """

    name: str
    file: str
    column: str | None
    kind: str  # "binary" | "graded"
    values: np.ndarray
    file_rows: int
    matched: int

    def describe(self) -> dict[str, Any]:
        v = self.values[~np.isnan(self.values)]
        return {"file": self.file, "column": self.column, "kind": self.kind,
                "membership": self.column is None, "file_rows": self.file_rows, "matched": self.matched,
                "labelled": int(v.size), **({"positives": int((v == 1).sum())} if self.kind == "binary" else {})}


def _records(path: Path) -> list[dict]:
    if not path.is_file():
        raise DataError(f"--labels {display_path(path)}: no such file")
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        text = path.read_text(encoding="utf-8-sig")
        if text.lstrip().startswith("["):
            recs = json.loads(text)
        else:
            recs = [json.loads(line) for line in text.splitlines() if line.strip()]
    except (OSError, ValueError) as exc:
        raise DataError(f"--labels {display_path(path)}: unreadable: {exc}") from None
    if not all(isinstance(r, dict) for r in recs):
        raise DataError(f"--labels {display_path(path)}: expected JSON objects, one per row")
    return recs


def _is_label(v: Any) -> bool:
    return isinstance(v, (bool, int, float)) and not (isinstance(v, float) and math.isnan(v))


def read_labels(path: str | Path, pool: "Pool") -> list[LabelSet]:
    """The label sets in ``path`` (.jsonl, .json or .parquet), matched to ``pool``.

    A record is matched by its ``id`` (dqf's row id) when it has one, else by the id of its
    content (instruction/input/output or a conversation, as dqf reads it), else by its
    instruction, input and output texts.
    """
    path = Path(path)
    recs = _records(path)
    if not recs:
        raise DataError(f"--labels {display_path(path)}: the file has no rows")
    frame = pool.frame
    by_id = {i: p for p, i in enumerate(frame["id"].to_list())}
    by_text = {t: p for p, t in enumerate(zip(frame["instruction"].to_list(), frame["input"].to_list(),
                                              frame["output"].to_list()))}
    columns: dict[str, bool] = {}
    for r in recs:
        for k, v in r.items():
            if k in KEY_FIELDS or v is None:
                continue
            columns[k] = columns.get(k, True) and _is_label(v)
    label_cols = [c for c, ok in columns.items() if ok]

    pos = np.full(len(recs), -1, dtype=np.int64)
    for i, r in enumerate(recs):
        rid = r.get("id")
        p = by_id.get(rid) if isinstance(rid, str) else None
        if p is None:
            try:
                c = canonicalize({k: v for k, v in r.items() if k in KEY_FIELDS - {"id"}}, "auto")
            except BadRow:
                c = None
            if c is not None:
                p = by_id.get(c.id)
                if p is None:
                    p = by_text.get((c.instruction, c.input, c.output))
        pos[i] = -1 if p is None else p
    hit = pos >= 0
    matched = int(np.unique(pos[hit]).size)
    if matched == 0:
        raise DataError(f"--labels {display_path(path)}: none of its {len(recs):,} rows is in the pool "
                        f"(matched by `id`, or by instruction/input/output)")
    n = pool.size
    out = []
    if not label_cols:
        v = np.zeros(n, dtype=np.float64)
        v[pos[hit]] = 1.0
        out.append(LabelSet(path.stem, display_path(path), None, "binary", v, len(recs), matched))
        return out
    for col in label_cols:
        v = np.full(n, np.nan, dtype=np.float64)
        for i in np.flatnonzero(hit):
            x = recs[i].get(col)
            if _is_label(x):
                v[pos[i]] = float(x)
        known = v[~np.isnan(v)]
        kind = "binary" if known.size and np.isin(known, (0.0, 1.0)).all() else "graded"
        out.append(LabelSet(f"{path.stem}.{col}", display_path(path), col, kind, v, len(recs), matched))
    return out
