"""Runs a validated recipe locally: reads input, runs steps in order, accounts for every row, writes outputs."""

from __future__ import annotations

import datetime as _dt
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__
from .atomic import atomic_open, write_parquet
from .cache import ScoreCache
from .embeddings import EmbeddingStore
from .errors import DataError, DqfError
from .plugin import BASE_COLUMNS, DERIVED_COLUMNS, FAILED_COLUMN, Probe, Scorer, Selector, StepContext
from .progress import Reporter, Timer
from .readers import derive_column, display_path, read_input
from .recipe import Recipe, Step
from .writers import write_jsonl, write_selected

KEPT = "kept"


@dataclass
class RunResult:
    run_dir: Path
    manifest: dict
    rows: Any  # polars.DataFrame written to rows.parquet
    selected: Any  # polars.DataFrame of the selected rows


def _check_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=run_dir, prefix=".dqf-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise DqfError(f"output.dir: cannot write to {display_path(run_dir)}: {exc.strerror or exc}") from None


def _status_column(n: int, positions, kept_positions, reason: str):
    """A per-step column: null where the row never reached the step, 'kept' or the drop reason otherwise."""
    import numpy as np
    import polars as pl

    codes = np.full(n, -1, dtype=np.int8)
    codes[np.asarray(positions, dtype=np.int64)] = 0
    codes[np.asarray(kept_positions, dtype=np.int64)] = 1
    return (
        pl.Series(codes)
        .replace_strict({-1: None, 0: reason, 1: KEPT}, return_dtype=pl.String)
    )


class Engine:
    """Local, in-process engine. One instance per run."""

    def __init__(self, recipe: Recipe, host, *, run_dir: Path | None = None, limit: int | None = None,
                 use_cache: bool = True, cache_dir: Path | None = None, reporter: Reporter | None = None):
        self.recipe = recipe
        self.host = host
        self.run_dir = Path(run_dir) if run_dir is not None else recipe.output_dir
        self.limit = limit
        cfg = recipe.model.cache
        root = cache_dir or (recipe.resolve(cfg.dir) if cfg.dir else None)
        self.cache = ScoreCache(root, enabled=use_cache and cfg.enabled)
        self.embeddings = EmbeddingStore(self.cache.root, enabled=self.cache.enabled)
        self.reporter = reporter or Reporter()
        self._setup_done: set[int] = set()
        self._raws = None  # id -> _raw of every row read, for derived columns of rows handed in without it
        self._embed_stats: dict[str, dict] = {}  # step id -> embeddings served from the cache / computed

    # -- public -----------------------------------------------------------------------
    def run(self) -> RunResult:
        from .models import recipe_dir, run_cache_dir

        token = recipe_dir.set(self.recipe.base_dir.resolve())  # relative model paths resolve against the recipe
        cache_token = run_cache_dir.set(self.cache.root)  # GGUF models are converted once, into this run's cache
        try:
            return self._run()
        finally:
            run_cache_dir.reset(cache_token)
            recipe_dir.reset(token)

    def _read_input(self, inp, advance):
        """The recipe's input as a :class:`dqf.readers.ReadResult` (the Ray engine reads shards on the cluster)."""
        return read_input(self.recipe.input_path, fmt=inp.format, fields=inp.fields, on_bad_row=inp.on_bad_row,
                          limit=self.limit, progress=advance)

    def _run(self) -> RunResult:
        import polars as pl

        total = Timer()
        started = _dt.datetime.now(_dt.timezone.utc)
        _check_writable(self.run_dir)
        self.host.hook.dqf_run_start(recipe=self.recipe, run_dir=self.run_dir)

        inp = self.recipe.model.input
        with self.reporter.task("read input", None) as advance:
            t = Timer()
            try:
                read = self._read_input(inp, advance)
            except DataError as exc:  # say which recipe pointed at the missing or empty input
                raise DataError(*[f"{self.recipe.path}: {line}" if line.startswith("input.path") else line
                                  for line in exc.lines]) from None
            read_seconds = t.seconds
        table = read.frame.with_row_index("_idx")
        self._raws = table.select("id", "_raw")
        n = table.height
        results: dict[str, Any] = {"input": table["_idx"]}
        status: dict[str, pl.Series] = {}
        step_reports = []

        for step in self.recipe.steps:
            t = Timer()
            rows_in = results[step.source]
            sub = table.filter(pl.col("_idx").is_in(rows_in.implode())) if step.source != "input" else table
            cache_info: dict[str, int] | None = None
            if isinstance(step.plugin, Scorer):
                scored, cache_info = self._run_scorer(step, sub)
                table = self._attach(table, scored)
                sub = table.filter(pl.col("_idx").is_in(rows_in.implode())) if step.source != "input" else table
            elif isinstance(step.plugin, Probe):
                with self.reporter.task(f"{step.id} ({step.plugin.name})", None):
                    out = step.plugin.run(sub, self._context(step, table, results))
                checked = self._check_output(f"probe {step.plugin.name!r} (step {step.id!r})", step.columns, out, sub.height)
                scored = pl.concat([sub.select("_idx"), checked], how="horizontal")
                table = self._attach(table, scored)
                sub = table.filter(pl.col("_idx").is_in(rows_in.implode())) if step.source != "input" else table

            reason = None
            kept = sub
            null_idx = None
            if step.where is not None:
                raw_mask = sub.select(pl.sql_expr(step.where).alias("m"))["m"]
                kept = sub.filter(raw_mask.fill_null(False))
                reason = f"where: {step.where}"
                # A null predicate (e.g. a probe that did not score the row) is a different story from a
                # false one, so the row's reason says so.
                null_idx = sub.filter(raw_mask.is_null())["_idx"]
            if isinstance(step.plugin, Selector):
                dropped_where = sub.filter(~pl.col("_idx").is_in(kept["_idx"].implode()))
                picked = self._run_selector(step, kept, table, results)
                sel_reason = step.plugin.drop_reason()
                kept_final = kept[picked]
                status[step.id] = self._status(n, sub, kept_final, dropped_where, reason, sel_reason)
                kept = kept_final
            else:
                status[step.id] = _status_column(n, sub["_idx"], kept["_idx"], reason or "")
            if null_idx is not None and null_idx.len():
                status[step.id] = status[step.id].scatter(null_idx, f"where: {step.where} (null)")
            results[step.id] = kept["_idx"].sort()
            step_reports.append({
                "id": step.id, "kind": step.kind, "plugin": step.plugin.name, "from": step.source,
                "where": step.where, "rows_in": sub.height, "rows_out": kept.height,
                "dropped": sub.height - kept.height, "seconds": round(t.seconds, 4),
                **({"cache": cache_info} if cache_info is not None else {}),
                **({"embeddings": self._embed_stats[step.id]} if step.id in self._embed_stats else {}),
                **({"stats": step.plugin.stats()} if step.plugin.stats() else {}),
            })

        final = pl.concat([results[s] for s in self.recipe.output_steps]).unique().sort()
        rows = self._rows_frame(table, status, final)
        selected = table.filter(pl.col("_idx").is_in(final.implode()))
        manifest = self._write_outputs(rows, selected, read, step_reports, started, total, read_seconds)
        self.host.hook.dqf_run_end(recipe=self.recipe, run_dir=self.run_dir, manifest=manifest)
        self.reporter.summary(manifest)
        return RunResult(self.run_dir, manifest, rows, selected)

    # -- steps --------------------------------------------------------------------------
    def _context(self, step: Step, table, results) -> StepContext:
        import polars as pl

        def step_rows(step_id: str):
            if step_id not in results:
                raise DqfError(f"step {step.id!r} asked for rows of {step_id!r}, which has not run")
            return table.filter(pl.col("_idx").is_in(results[step_id].implode())).drop("_raw")

        def embeddings(embedder, texts):
            t = Timer()
            with self.reporter.task(f"{step.id}: embed ({embedder.name})", None) as advance:
                out = self.embeddings.embed(embedder, texts, advance)
            stats = self._embed_stats.setdefault(step.id, {"hits": 0, "computed": 0, "seconds": 0.0})
            for k, v in getattr(self.embeddings, "last_stats", {}).items():
                stats[k] = stats.get(k, 0) + v
            stats["seconds"] = round(stats["seconds"] + t.seconds, 4)
            return out

        def score(scorer, rows):
            scored, _ = self._score_rows(scorer, dict(scorer.columns()), rows, label=f"{step.id}: {scorer.name}",
                                         key="id", what=f"scorer {scorer.name!r} (inside step {step.id!r})")
            return rows.select("id").join(scored, on="id", how="left", maintain_order="left").drop("id")

        return StepContext(step_id=step.id, seed=self.recipe.seed, run_dir=self.run_dir,
                           cache_dir=self.cache.root, _step_rows=step_rows, _embeddings=embeddings,
                           _score=score, _progress=self.reporter.task)

    @staticmethod
    def _check_output(what: str, columns: dict, out, height: int):
        import polars as pl

        if not isinstance(out, pl.DataFrame):
            raise DqfError(f"{what} returned {type(out).__name__}, expected a polars DataFrame")
        if out.height != height:
            raise DqfError(f"{what} returned {out.height} rows for a batch of {height}")
        missing = [c for c in columns if c not in out.columns]
        if missing:
            raise DqfError(f"{what} did not return declared column(s) {', '.join(missing)}")
        try:
            return out.select([pl.col(c).cast(dt) for c, dt in columns.items()])
        except Exception as exc:
            raise DqfError(f"{what} returned a column that does not match its declared dtype: {exc}") from None

    def _run_scorer(self, step: Step, sub):
        return self._score_rows(step.plugin, step.columns, sub, label=f"{step.id} ({step.plugin.name})",
                                batch_size=step.batch_size, upstream=self._upstream_key(step),
                                what=f"scorer {step.plugin.name!r} (step {step.id!r})")

    def _score_rows(self, scorer: Scorer, columns: dict, sub, *, label: str, batch_size: int | None = None,
                    upstream: str = "", what: str = "", key: str = "_idx"):
        """Scores for ``sub`` from the cache where present, computed batch by batch (each batch cached) otherwise."""
        import polars as pl

        what = what or f"scorer {scorer.name!r}"
        cols = list(columns)
        try:
            entry = self.cache.entry(scorer, upstream)  # the key may resolve the scorer's model
        except DqfError as exc:
            raise DqfError(*[f"{label}: {line}" for line in exc.lines]) from None
        cached = entry.load(cols)
        if cached is not None:
            hits = sub.select(*dict.fromkeys([key, "id"])).join(cached, on="id", how="inner")  # key may be "id"
            todo = sub.filter(~pl.col("id").is_in(cached["id"].implode()))
        else:
            hits = None
            todo = sub
        pieces = [hits.drop("id") if key != "id" else hits] if hits is not None and hits.height else []
        failed = 0
        if todo.height:
            bs = batch_size or scorer.batch_size
            view = ["id", *[c for c in BASE_COLUMNS if c != "id"], *sorted(scorer.requires())]
            derived = sorted(set(scorer.requires()) & set(DERIVED_COLUMNS))
            if derived and "_raw" not in todo.columns:  # rows from a selector's context.score(): look records up
                todo = todo.join(self._raws, on="id", how="left", maintain_order="left")
            with self.reporter.task(label, todo.height) as advance:
                for batch, raw_out in self._scored_batches(scorer, todo, bs, view, derived, key=key, label=label):
                    out = self._check_output(what, columns, raw_out, batch.height)
                    done = pl.concat([batch.select("id"), out], how="horizontal")
                    if FAILED_COLUMN in raw_out.columns:  # transient failures: used now, computed again next run
                        bad = raw_out[FAILED_COLUMN].cast(pl.Boolean).fill_null(False)
                        failed += int(bad.sum())
                        done = done.filter(~bad)
                    entry.write(done)
                    pieces.append(pl.concat([batch.select(key), out], how="horizontal"))
                    advance(batch.height)
        elif hits is not None:
            self.reporter.info(f"{label}: all {hits.height:,} rows from cache")
        if pieces:
            scored = pl.concat(pieces, how="vertical_relaxed")
        else:  # no rows reached this step: its columns still exist, null for every row
            scored = pl.concat([sub.select(key).clear(), pl.DataFrame(schema=columns)], how="horizontal")
        info = {"hits": 0 if hits is None else hits.height, "computed": todo.height}
        if todo.height and (merged := entry.compact()):
            info["shards_merged"] = merged
        return scored, {**info, "failed": failed} if failed else info

    def _scored_batches(self, scorer: Scorer, todo, batch_size: int, view: list[str], derived: list[str], *,
                        key: str, label: str):
        """Yield ``(batch, scorer.score(batch.select(view)))`` over ``todo``, ``batch_size`` rows at a time.

        The one place rows missing from the score cache are computed: a distributed engine
        (:mod:`dqf.ray_engine`) overrides it. Every row of ``todo`` must come back exactly once,
        in any order; ``batch`` needs only ``id`` and ``key``; caching, checks and accounting
        stay with the caller.
        """
        if id(scorer) not in self._setup_done:
            try:
                scorer.setup()
            except DqfError as exc:  # say which step's model failed to load
                raise DqfError(*[f"{label}: {line}" for line in exc.lines]) from None
            self._setup_done.add(id(scorer))
        for batch in todo.iter_slices(batch_size):
            if derived:
                batch = batch.with_columns(self._derived(derived, batch["_raw"]))
            yield batch, scorer.score(batch.select(view))

    def _derived(self, names: list[str], raws) -> list:
        """The derived columns ``names`` (see :data:`dqf.DERIVED_COLUMNS`) of rows whose records are ``raws``."""
        inp = self.recipe.model.input
        return [derive_column(c, raws, fmt=inp.format, fields=inp.fields) for c in names]

    def _upstream_key(self, step: Step) -> str:
        """Cache keys of the steps that produce the columns ``step`` reads, so changing them invalidates it."""
        producers = {c: s for s in self.recipe.chain(step.id)[:-1] for c in s.columns}
        parts = []
        for col in sorted(step.plugin.requires()):
            if col in producers:
                p = producers[col]
                parts.append(f"{col}={p.plugin.cache_key()}:{self._upstream_key(p)}")
        return ";".join(parts)

    @staticmethod
    def _attach(table, scored):
        if scored is None:
            return table
        return table.join(scored, on="_idx", how="left").sort("_idx")

    def _run_selector(self, step: Step, rows, table, results):
        import numpy as np
        import polars as pl

        ctx = self._context(step, table, results)
        picked = step.plugin.select(rows.drop("_raw"), ctx)
        if isinstance(picked, pl.Series) and picked.dtype == pl.Boolean:
            if picked.len() != rows.height:
                raise DqfError(f"selector {step.plugin.name!r} returned a mask of {picked.len()} for {rows.height} rows")
            return np.flatnonzero(picked.fill_null(False).to_numpy())
        arr = np.asarray(picked.to_numpy() if isinstance(picked, pl.Series) else
                         (picked if isinstance(picked, np.ndarray) else list(picked)))
        if arr.dtype == np.bool_:  # a mask, whatever container it came in
            if arr.shape != (rows.height,):
                raise DqfError(f"selector {step.plugin.name!r} returned a mask of {arr.size} for {rows.height} rows")
            return np.flatnonzero(arr)
        pos = arr.astype(np.int64) if arr.size else np.zeros(0, dtype=np.int64)
        if pos.size and (pos.min() < 0 or pos.max() >= rows.height):
            raise DqfError(f"selector {step.plugin.name!r} returned a position outside 0..{rows.height - 1}")
        return np.unique(pos)

    @staticmethod
    def _status(n, sub, kept, dropped_where, where_reason, sel_reason):
        import polars as pl

        col = _status_column(n, sub["_idx"], kept["_idx"], sel_reason)
        if dropped_where.height:
            col = col.scatter(dropped_where["_idx"], where_reason)
        return col.cast(pl.String)

    # -- outputs -------------------------------------------------------------------------
    def _rows_frame(self, table, status, final):
        import polars as pl

        score_cols = [c for s in self.recipe.steps_in_file_order for c in s.columns]
        frame = table.select("_idx", "id", pl.col("_source").alias("source"), "copies", *score_cols)
        frame = frame.with_columns(
            [status[s.id].alias(f"step_{s.id}") for s in self.recipe.steps_in_file_order]
        )
        selected = pl.col("_idx").is_in(final.implode())
        # The reason a row is not in the output: the first drop on the path to the first output step.
        chain = self.recipe.chain(self.recipe.output_steps[0]) if self.recipe.output_steps[0] != "input" else []
        dropped_by = pl.lit(None, dtype=pl.String)
        reason = pl.lit(None, dtype=pl.String)
        for s in reversed(chain):
            c = pl.col(f"step_{s.id}")
            is_drop = c.is_not_null() & (c != KEPT)
            dropped_by = pl.when(is_drop).then(pl.lit(s.id)).otherwise(dropped_by)
            reason = pl.when(is_drop).then(c).otherwise(reason)
        frame = frame.with_columns(
            selected.alias("selected"),
            pl.when(selected).then(None).otherwise(dropped_by).alias("dropped_by"),
            pl.when(selected).then(None).otherwise(reason).alias("reason"),
        )
        return frame.drop("_idx")

    def _write_outputs(self, rows, selected, read, step_reports, started, total, read_seconds) -> dict:
        out = self.recipe.model.output
        write_parquet(rows, self.run_dir / "rows.parquet")
        sel_path = write_selected(selected, self.run_dir, out.format)
        qpath = self.run_dir / "quarantine.jsonl"
        if read.quarantined:
            write_jsonl(read.quarantined, qpath)
        elif qpath.exists():
            qpath.unlink()  # a stale file from an earlier run would misstate this one
        manifest = {
            "name": self.recipe.name,
            "dqf_version": __version__,
            "recipe_path": str(self.recipe.path),
            "recipe": self.recipe.model.model_dump(mode="json", by_alias=True),
            "seed": self.recipe.seed,
            "started_at": started.isoformat(timespec="seconds"),
            "wall_seconds": None,
            "input": {
                "path": display_path(self.recipe.input_path),
                "files": read.files,
                "limit": self.limit,
                "read_seconds": round(read_seconds, 4),
            },
            "counts": {
                "rows_read": read.rows_read,
                "quarantined": len(read.quarantined),
                "duplicates": read.duplicates,
                "unique_rows": rows.height,
                "selected": selected.height,
            },
            "plugins": [self._plugin_record(s) for s in self.recipe.steps_in_file_order],
            "steps": sorted(step_reports, key=lambda r: self.recipe.step(r["id"]).index),
            "output": {
                "dir": display_path(self.run_dir),
                "format": out.format,
                "select": self.recipe.output_steps,
                "selected_file": display_path(sel_path),
                "rows_file": display_path(self.run_dir / "rows.parquet"),
                "quarantine_file": display_path(qpath) if read.quarantined else None,
            },
            "cache": {"dir": str(self.cache.root), "enabled": self.cache.enabled},
            "engine": self._engine_record(),
        }
        manifest["wall_seconds"] = round(total.seconds, 4)
        with atomic_open(self.run_dir / "manifest.json") as fh:
            json.dump(manifest, fh, indent=2, ensure_ascii=False, default=str)
            fh.write("\n")
        return manifest

    def _engine_record(self) -> dict:
        """Recorded in the manifest: which engine ran the steps (a distributed engine adds its cluster)."""
        return {"kind": "local"}

    def _plugin_record(self, step: Step) -> dict:
        info = self.host.get({"score": "scorer", "select": "selector", "probe": "probe"}[step.kind], step.plugin.name)
        return {
            "step": step.id,
            **step.plugin.describe(),
            "distribution": info.provider.distribution,
            "distribution_version": info.provider.version,
            "module": info.provider.module,
        }


def run_recipe(recipe: Recipe, host, **kwargs) -> RunResult:
    """Run ``recipe`` with plugins from ``host`` on the engine its ``[engine]`` names; see :class:`Engine`."""
    if recipe.model.engine.kind == "ray":
        from .ray_engine import RayEngine

        return RayEngine(recipe, host, **kwargs).run()
    return Engine(recipe, host, **kwargs).run()
