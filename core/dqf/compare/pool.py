"""The pool every strategy chose from: its rows' texts, score columns and mix fields, in one row order."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dqf.errors import DataError, DqfError
from dqf.io.readers import display_path, read_input

if TYPE_CHECKING:
    import polars as pl

    from dqf.compare.strategies import Strategy

#: Columns of rows.parquet that are bookkeeping, not scores.
NOT_SCORES = {"id", "source", "copies", "selected", "dropped_by", "reason"}
#: Fields of the original records whose value mix is reported when the pool carries them.
MIX_FIELDS = ("source", "category")


@dataclass
class Pool:
    """``frame`` holds ``id``, ``instruction``, ``input``, ``output`` and ``_raw`` (the record as read), one row per
    unique input row, in the order of the first run's rows.parquet; ``input`` says where the texts came from."""

    frame: "pl.DataFrame"
    input: str

    @property
    def size(self) -> int:
        return self.frame.height

    @property
    def ids(self) -> "pl.Series":
        return self.frame["id"]


def _candidates(strategy: "Strategy") -> list[Path]:
    """Where the run's input may be now. Paths in a manifest are relative to the directory the run
    was started from, which need not be the current one, so that directory is worked out too."""
    m = strategy.manifest or {}
    inp = m.get("input", {}).get("path")
    recipe_input = (m.get("recipe") or {}).get("input", {}).get("path")
    recipe_path = m.get("recipe_path")
    out_dir = (m.get("output") or {}).get("dir")
    roots = [Path.cwd()]
    if out_dir and strategy.path is not None:
        rel = Path(out_dir)
        run_abs = Path(strategy.path).resolve()
        if not rel.is_absolute() and ".." not in rel.parts and run_abs.parts[-len(rel.parts):] == rel.parts:
            roots.append(run_abs.parents[len(rel.parts) - 1])
    out: list[Path] = []
    for root in roots:
        if inp:
            out.append(root / inp)
        if recipe_path and recipe_input:
            out.append(Path(os.path.normpath(root / Path(recipe_path).parent / Path(recipe_input).expanduser())))
    return list(dict.fromkeys(p if p.is_absolute() else p.resolve() for p in out))


def load_pool(strategies: list["Strategy"], pool_path: Path | None = None) -> Pool:
    """Read the pool's texts: from ``pool_path`` if given, else from the first run's recorded input.

    The texts are accepted only when their row ids are exactly the ids of the run's rows.parquet,
    so a changed or different input file is an error, never a silent misalignment.
    """
    import polars as pl

    first = next(s for s in strategies if s.rows is not None)
    ids = first.rows["id"]
    rec_input = ((first.manifest or {}).get("recipe") or {}).get("input", {})
    fmt = rec_input.get("format", "auto")
    fields = rec_input.get("fields") or {}
    limit = (first.manifest or {}).get("input", {}).get("limit")
    tried = [Path(pool_path)] if pool_path is not None else _candidates(first)
    problems = []
    for path in tried:
        if not path.exists():
            problems.append(f"{display_path(path)} (missing)")
            continue
        try:
            read = read_input(path, fmt=fmt, fields=fields, on_bad_row="quarantine", limit=limit)
        except DataError as exc:
            problems.append(f"{display_path(path)} ({exc})")
            continue
        frame = read.frame.select("id", "instruction", "input", "output", "_raw")
        have = set(frame["id"].to_list())
        missing = sum(1 for i in ids.to_list() if i not in have)
        if missing:
            problems.append(f"{display_path(path)} ({missing:,} of the {ids.len():,} row ids of {first.name} "
                            f"are not in it)")
            continue
        frame = pl.DataFrame({"id": ids}).join(frame, on="id", how="left", maintain_order="left")
        return Pool(frame, display_path(path))
    hint = "" if pool_path is not None else "; pass the input file with --pool FILE"
    raise DqfError(f"cannot read the texts of the pool {first.name} was run on: tried {'; '.join(problems)}{hint}")


def aligned(frame: "pl.DataFrame", pool: Pool, columns: list[str]) -> "pl.DataFrame":
    """``columns`` of ``frame`` (which has ``id``) in pool row order."""
    import polars as pl

    return pl.DataFrame({"id": pool.ids}).join(frame.select("id", *columns), on="id", how="left",
                                               maintain_order="left").drop("id")


def score_columns(strategies: list["Strategy"], pool: Pool) -> dict[str, dict[str, Any]]:
    """Every numeric or boolean column scorer and probe steps wrote into the runs' rows.parquet.

    A column several runs carry with the same values (a shared, cached scorer) is reported once;
    where their values differ, each run's column is kept as ``column@run``. Returns
    ``name -> {"values": float64 array in pool order (NaN where null; booleans as 0/1), "runs": [strategy
    names], "boolean": bool}``.
    """
    import numpy as np
    import polars as pl

    per_name: dict[str, list[tuple[str, np.ndarray, bool]]] = {}
    for s in strategies:
        if s.rows is None:
            continue
        cols = [c for c, dt in s.rows.schema.items()
                if c not in NOT_SCORES and not c.startswith("step_") and (dt.is_numeric() or dt == pl.Boolean)]
        if not cols:
            continue
        frame = aligned(s.rows, pool, cols)
        for c in cols:
            v = frame[c].cast(pl.Float64).fill_nan(None).to_numpy().astype(np.float64)
            per_name.setdefault(c, []).append((s.name, v, s.rows.schema[c] == pl.Boolean))
    out: dict[str, dict[str, Any]] = {}
    for c, versions in per_name.items():
        ref = versions[0][1]
        if all(np.array_equal(ref, v, equal_nan=True) for _, v, _ in versions[1:]):
            out[c] = {"values": ref, "runs": [n for n, _, _ in versions], "boolean": versions[0][2]}
        else:
            for n, v, b in versions:
                out[f"{c}@{n}"] = {"values": v, "runs": [n], "boolean": b}
    return out


def mix_fields(pool: Pool) -> dict[str, "pl.Series"]:
    """The :data:`MIX_FIELDS` the pool's original records carry (null where a record lacks it)."""
    import polars as pl

    out = {}
    for f in MIX_FIELDS:
        vals = pool.frame.select(pl.col("_raw").str.json_path_match(f"$.{f}").alias(f))[f]
        if vals.null_count() < vals.len():
            out[f] = vals
    return out
