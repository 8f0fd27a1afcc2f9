"""The strategies being compared: run directories read as they are, recipes run first, all checked to share one pool."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dqf.errors import DqfError
from dqf.io.readers import display_path

if TYPE_CHECKING:
    import numpy as np
    import polars as pl

    from dqf.engine.progress import Reporter


@dataclass
class Strategy:
    """One selection over the pool.

    ``rows`` is the run's rows.parquet (``None`` for a baseline); ``mask`` marks the selected rows
    in pool order once the pool is known.
    """

    name: str
    kind: str  # "run" | "recipe" | "baseline"
    path: str | None = None
    recipe: str | None = None
    manifest: dict | None = None
    rows: "pl.DataFrame | None" = None
    mask: "np.ndarray | None" = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(self.mask.sum()) if self.mask is not None else int(self.rows["selected"].sum())

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "path": self.path, "recipe": self.recipe,
                "run_name": (self.manifest or {}).get("name"), "size": self.size,
                **({"note": self.note} if self.note else {})}


def _is_run_dir(path: Path) -> bool:
    return path.is_dir() and (path / "rows.parquet").is_file() and (path / "manifest.json").is_file()


def _unique_name(base: str, taken: set[str]) -> str:
    name, i = base, 2
    while name in taken:
        name, i = f"{base}-{i}", i + 1
    taken.add(name)
    return name


def read_run(path: Path, name: str, kind: str = "run", recipe: str | None = None) -> Strategy:
    """A run directory's rows.parquet and manifest.json."""
    import polars as pl

    try:
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        rows = pl.read_parquet(path / "rows.parquet")
    except (OSError, ValueError, pl.exceptions.PolarsError) as exc:
        raise DqfError(f"{display_path(path)}: cannot read the run: {exc}") from None
    if "id" not in rows.columns or "selected" not in rows.columns:
        raise DqfError(f"{display_path(path)}/rows.parquet: no `id` or `selected` column; is it a dqf run?")
    return Strategy(name=name, kind=kind, path=display_path(path), recipe=recipe, manifest=manifest, rows=rows)


def load_strategies(args: list[str | Path], *, out: Path, cache_dir: Path | None = None, use_cache: bool = True,
                    reporter: "Reporter | None" = None) -> list[Strategy]:
    """Each argument is a run directory (rows.parquet + manifest.json) or a recipe ``.toml``.

    A recipe is run through the normal engine into ``<out>/runs/<recipe stem>``, with the default
    score and embedding cache (or ``cache_dir``), so stages several recipes share are computed once.
    """
    from dqf import load_recipe
    from dqf.engine import run_recipe

    taken: set[str] = set()
    strategies = []
    for arg in args:
        path = Path(arg)
        if _is_run_dir(path):
            strategies.append(read_run(path, _unique_name(path.resolve().name, taken)))
        elif path.is_file() and path.suffix == ".toml":
            name = _unique_name(path.stem, taken)
            rec, host = load_recipe(path)
            run_dir = Path(out) / "runs" / name
            run_recipe(rec, host, run_dir=run_dir, use_cache=use_cache, cache_dir=cache_dir, reporter=reporter)
            strategies.append(read_run(run_dir, name, kind="recipe", recipe=display_path(path)))
        elif path.is_dir():
            raise DqfError(f"{display_path(path)}: not a run directory (it needs rows.parquet and manifest.json, "
                           f"as `dqf run` writes them)")
        elif path.exists():
            raise DqfError(f"{display_path(path)}: not a run directory or a recipe (.toml)")
        else:
            raise DqfError(f"{display_path(path)}: no such run directory or recipe")
    if not strategies:
        raise DqfError("dqf compare needs at least one run directory or recipe")
    check_same_pool(strategies)
    return strategies


def check_same_pool(strategies: list[Strategy]) -> None:
    """Every run must have scored the same unique rows; otherwise no number below is comparable."""
    first = strategies[0]
    ref = set(first.rows["id"].to_list())
    for s in strategies[1:]:
        ids = set(s.rows["id"].to_list())
        if ids != ref:
            only_a, only_b = len(ref - ids), len(ids - ref)
            raise DqfError(
                f"{first.name} ({first.path}) and {s.name} ({s.path}) were not run on the same pool: "
                f"{only_a:,} of {first.name}'s {len(ref):,} row ids are not in {s.name}, and {only_b:,} of "
                f"{s.name}'s {len(ids):,} are not in {first.name}; compare runs of the same input (and --limit)")


def attach_masks(strategies: list[Strategy], pool_ids: "pl.Series") -> None:
    """Set each run's ``mask`` (selected rows, in pool order) from its rows.parquet."""
    import polars as pl

    for s in strategies:
        if s.rows is not None:
            sel = pl.DataFrame({"id": pool_ids}).join(s.rows.select("id", "selected"), on="id", how="left",
                                                      maintain_order="left")["selected"]
            s.mask = sel.fill_null(False).to_numpy().astype(bool)
