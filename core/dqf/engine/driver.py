"""The driver of a run: steps in order, caches, every row accounted for, outputs; the heavy work goes to an executor."""

from __future__ import annotations

import datetime as _dt
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dqf._version import __version__
from dqf.engine.base import Executor
from dqf.engine.context import step_context
from dqf.errors import DataError, DqfError
from dqf.plugin import BASE_COLUMNS, DERIVED_COLUMNS, FAILED_COLUMN, Probe, Scorer, Selector, Workspace
from dqf.store import Store
from dqf.store.atomic import atomic_files, sweep_temporaries
from dqf.engine.progress import Reporter, Timer
from dqf.io.readers import derive_column, display_path, inside_input
from dqf.recipe import Recipe, Step
from dqf.io.loaders import write_loaders
from dqf.io.writers import output_file, selected_files, write_jsonl, write_selected

KEPT = "kept"


@dataclass
class RunResult:
    run_dir: Path
    manifest: dict
    rows: Any  # polars.DataFrame written to rows.parquet
    selected: Any  # polars.DataFrame of the selected rows


def _check_writable(folder: Path, key: str) -> None:
    """``folder`` exists (or can be made) and takes a file, else a one-line error naming the recipe ``key``."""
    if folder.exists() and not folder.is_dir():
        raise DqfError(f"{key}: {display_path(folder)} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".dqf-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise DqfError(f"{key}: cannot write to {display_path(folder)}: {exc.strerror or exc}") from None


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
    """Runs one recipe once, its scoring and embedding done by ``executor``. One instance per run."""

    def __init__(self, recipe: Recipe, host, executor: Executor, *, run_dir: Path | None = None,
                 limit: int | None = None, use_cache: bool = True, cache_dir: Path | None = None,
                 reporter: Reporter | None = None):
        self.recipe = recipe
        self.host = host
        self.executor = executor
        self.run_dir = Path(run_dir) if run_dir is not None else recipe.output_dir
        self.limit = limit
        cfg = recipe.model.cache
        root = cache_dir or (recipe.resolve(cfg.dir) if cfg.dir else None)
        self.store = Store(root, enabled=use_cache and cfg.enabled)
        self.reporter = reporter or Reporter()
        self._raws = None  # id -> _raw of every row read, for derived columns of rows handed in without it
        self._embed_stats: dict[str, dict] = {}  # step id -> embeddings served from the cache / computed

    # -- public -----------------------------------------------------------------------
    def run(self) -> RunResult:
        # Relative model paths resolve against the recipe; GGUF models are converted once, into this run's cache.
        workspace = Workspace(base_dir=self.recipe.base_dir.resolve(), cache_dir=self.store.root)
        for step in self.recipe.steps:
            step.plugin.bind(workspace)
        try:
            return self._run()
        finally:
            self.executor.close()

    def _run(self) -> RunResult:
        import polars as pl

        total = Timer()
        started = _dt.datetime.now(_dt.timezone.utc)
        for folder, key in ((self.run_dir, "output.dir"), (self.store.root, "cache.dir")):
            if key == "cache.dir" and not self.store.enabled:
                continue
            problem = inside_input(self.recipe.input_path, folder, key)
            if problem:
                raise DqfError(problem)
            _check_writable(folder, key)  # before the input is read, not when the first batch is written
        sweep_temporaries(self.run_dir)  # what writers killed mid-write left (the cache sweeps its own)
        self.host.hook.dqf_run_start(recipe=self.recipe, run_dir=self.run_dir)

        with self.reporter.task("read input", None) as advance:
            t = Timer()
            try:
                read = self.executor.read_input(self.limit, advance)
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
                try:
                    scored, cache_info = self._run_scorer(step, sub)
                finally:  # only this step uses the step's scorer: free its model before the next step loads one
                    self.executor.release(step.plugin)
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
            where_kept = kept
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
            if reason is not None:
                status[step.id] = self._own_reasons(step.where, sub, where_kept, status[step.id])
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
    def _context(self, step: Step, table, results):
        return step_context(self, step, table, results)

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
                                step_id=step.id, batch_size=step.batch_size, upstream=self._upstream_key(step),
                                what=f"scorer {step.plugin.name!r} (step {step.id!r})")

    def _score_rows(self, scorer: Scorer, columns: dict, sub, *, label: str, step_id: str,
                    batch_size: int | None = None, upstream: str = "", what: str = "", key: str = "_idx"):
        """Scores for ``sub`` from the cache where present, computed batch by batch (each batch cached) otherwise."""
        import polars as pl

        what = what or f"scorer {scorer.name!r}"
        cols = list(columns)
        try:
            entry = self.store.scores(scorer, upstream)  # the key may resolve the scorer's model
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
            optional = set(scorer.optional_columns) & set(DERIVED_COLUMNS)  # handed over when it can be derived
            view = ["id", *[c for c in BASE_COLUMNS if c != "id"], *sorted(set(scorer.requires()) | optional)]
            derived = sorted((set(scorer.requires()) | optional) & set(DERIVED_COLUMNS))
            if derived and "_raw" not in todo.columns:  # rows from a selector's context.score(): look records up
                todo = todo.join(self._raws, on="id", how="left", maintain_order="left")
            derive = (lambda frame: frame.with_columns(self._derived(derived, frame["_raw"]))) if derived else None
            batches = self.executor.score_batches(scorer, todo, batch_size=bs, view=view, derive=derive, key=key,
                                                  label=label, step_id=step_id)
            with self.reporter.task(label, todo.height) as advance:
                for batch, raw_out in batches:
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
    def _own_reasons(where: str, sub, kept, col):
        """``where = "<name>_ok"`` over a scorer that explains itself in ``<name>_reason`` (e.g. ``heuristic_ok`` /
        ``heuristic_reason``): each dropped row's reason names the check that failed, with its value."""
        import polars as pl

        name = where.strip()
        reason_col = name[:-3] + "_reason" if name.endswith("_ok") and name.isidentifier() else None
        if reason_col is None or reason_col not in sub.columns:
            return col
        dropped = sub.filter(~pl.col("_idx").is_in(kept["_idx"].implode()) & pl.col(reason_col).is_not_null())
        if not dropped.height:
            return col
        return col.scatter(dropped["_idx"], ("where: " + name + " (" + dropped[reason_col] + ")"))

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
        # coalesce() over the path, not nested when/otherwise: a flat expression, so 10,000 steps stay linear.
        drops = [(pl.col(f"step_{s.id}").is_not_null() & (pl.col(f"step_{s.id}") != KEPT), s) for s in chain]
        dropped_by = pl.coalesce([pl.lit(None, dtype=pl.String)] +
                                 [pl.when(d).then(pl.lit(s.id)) for d, s in drops])
        reason = pl.coalesce([pl.lit(None, dtype=pl.String)] +
                             [pl.when(d).then(pl.col(f"step_{s.id}")) for d, s in drops])
        frame = frame.with_columns(
            selected.alias("selected"),
            pl.when(selected).then(None).otherwise(dropped_by).alias("dropped_by"),
            pl.when(selected).then(None).otherwise(reason).alias("reason"),
        )
        return frame.drop("_idx")

    def _write_outputs(self, rows, selected, read, step_reports, started, total, read_seconds) -> dict:
        out = self.recipe.model.output
        inp = self.recipe.model.input
        # All new or all old: an error while writing any output leaves the previous run's files as they were.
        with atomic_files() as group:
            rows.write_parquet(group.path(self.run_dir / "rows.parquet"))
            sel_path = output_file(self.run_dir, out.format)
            notes = write_selected(selected, group.path(sel_path), out.format, inp.fields)
            notes["load"] = write_loaders(sel_path, out.format, self.recipe.name, group.path)
            for stale in selected_files(self.run_dir):  # another format's selection would misstate this run
                if stale != sel_path:
                    group.remove(stale)
            qpath = self.run_dir / "quarantine.jsonl"
            if read.quarantined:
                write_jsonl(read.quarantined, group.path(qpath))
            else:
                group.remove(qpath)  # a stale file from an earlier run would misstate this one
            manifest = self._manifest(rows, selected, read, step_reports, started, total, read_seconds, sel_path,
                                      qpath, notes)
            with open(group.path(self.run_dir / "manifest.json"), "w", encoding="utf-8") as fh:
                json.dump(manifest, fh, indent=2, ensure_ascii=False, default=str)
                fh.write("\n")
        return manifest

    def _manifest(self, rows, selected, read, step_reports, started, total, read_seconds, sel_path, qpath,
                  notes) -> dict:
        out = self.recipe.model.output
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
                **notes,
            },
            "cache": {"dir": str(self.store.root), "enabled": self.store.enabled},
            "engine": self.executor.record(),
        }
        manifest["wall_seconds"] = round(total.seconds, 4)
        return manifest

    def _plugin_record(self, step: Step) -> dict:
        info = self.host.get(step.plugin.kind, step.plugin.name)
        return {
            "step": step.id,
            **step.plugin.describe(),
            "distribution": info.provider.distribution,
            "distribution_version": info.provider.version,
            "module": info.provider.module,
        }
