"""`kcenter` selector: a diverse subset by greedy k-center over embeddings, optionally continuing from a seed step."""

from __future__ import annotations

from typing import Optional

from pydantic import Field, model_validator

from dqf import BudgetOptions, DqfError, PluginSpec, Selector



class KCenterOptions(BudgetOptions):
    embedder: PluginSpec = Field(default=PluginSpec(plugin="hf-encoder"),
                                 description="Embedder giving the vectors (default: hf-encoder, BERT CLS as MoDS).")
    start_from: Optional[str] = Field(
        default=None, description="Id of an earlier step whose rows are already chosen (e.g. the MoDS seed set).")
    continue_from_centres: bool = Field(
        default=True, description="With start_from: its rows are the initial centres, so new picks cover what they "
                                  "do not. False: plain k-center over the candidates, as the MoDS scripts run it.")
    exclude_start: bool = Field(
        default=True, description="With start_from and continue_from_centres = false: never pick rows of start_from.")
    first: Optional[str] = Field(default=None, description="Row id of the first centre (default: drawn with seed).")
    seed: Optional[int] = Field(default=None, description="Seed for the first centre (default: the recipe's seed).")

    @model_validator(mode="after")
    def _consistent(self):
        continuing = self.start_from is not None and self.continue_from_centres
        if continuing and not self.exclude_start:
            raise ValueError("exclude_start = false needs continue_from_centres = false: when continuing, the rows of "
                             "start_from are centres already and are never picked again")
        if continuing and self.first is not None:
            raise ValueError("`first` cannot be combined with start_from when continuing from its centres "
                             "(the first pick is the row farthest from them); set continue_from_centres = false")
        return self


class KCenterSelector(Selector):
    """Keep k rows chosen by greedy k-center (farthest point first) over embeddings, the MoDS diversity step."""

    name = "kcenter"
    version = "1"
    Options = KCenterOptions
    nested_plugins = {"embedder": "embedder"}

    def depends_on(self):
        return [self.options.start_from] if self.options.start_from else []

    def requires(self):
        return self.nested_requires("embedder")

    def select(self, rows, context):
        import numpy as np
        import polars as pl

        from dqf.select import kcenter_greedy  # loads numpy: kept out of plugin registration

        o = self.options
        emb = self.nested_plugin("embedder")
        k = o.budget(rows.height)
        start = context.step_rows(o.start_from) if o.start_from else rows.clear()
        in_start = rows["id"].is_in(start["id"].implode()).to_numpy()
        continuing = o.start_from is not None and o.continue_from_centres

        if continuing:
            # Start rows that are not candidates are appended, so one embeddings call covers all.
            extra = start.filter(~pl.col("id").is_in(rows["id"].implode()))
            cand = np.arange(rows.height)
            frame = pl.concat([rows, extra], how="diagonal_relaxed") if extra.height else rows
            already = np.concatenate([np.flatnonzero(in_start), rows.height + np.arange(extra.height)])
        else:
            drop = in_start if (o.start_from and o.exclude_start) else np.zeros(rows.height, dtype=bool)
            cand = np.flatnonzero(~drop)
            frame = rows.filter(pl.Series(~drop)) if drop.any() else rows
            already = np.empty(0, dtype=np.int64)
        self._stats = {"candidates": int(cand.size), "start_centres": int(already.size)}
        if k == 0 or cand.size == 0:
            self._stats["picked"] = 0
            return []

        X = context.embeddings(emb, frame)
        first = None
        if not already.size:
            first = self._first(frame, o.seed if o.seed is not None else context.seed)
        with context.progress(f"{context.step_id}: k-center", total=min(k, X.shape[0] - already.size)) as advance:
            picks = kcenter_greedy(X, k, already_selected=already, first=first, progress=advance)
        picks = np.asarray(picks, dtype=np.int64)
        self._stats["picked"] = int(picks.size)
        return cand[picks] if not continuing else picks

    def _first(self, rows, seed):
        """Position of the first centre: the `first` row, else a seeded draw that does not depend on input order."""
        import numpy as np

        if self.options.first is not None:
            hit = np.flatnonzero((rows["id"] == self.options.first).to_numpy())
            if not hit.size:
                raise DqfError(f"kcenter: first = {self.options.first!r} is not a row id among this step's "
                               f"{rows.height} candidate rows")
            return int(hit[0])
        # Drawn over rows sorted by id (as the random selector does) so file order does not change the pick.
        order = np.argsort(rows["id"].to_numpy(), kind="stable")
        return int(order[np.random.default_rng(seed).integers(rows.height)])

    def drop_reason(self):
        o = self.options
        size = f"k={o.k}" if o.k is not None else f"fraction={o.fraction}"
        if o.start_from and o.continue_from_centres:
            size += f", continuing from {o.start_from}"
        return f"not picked by k-center ({size})"
