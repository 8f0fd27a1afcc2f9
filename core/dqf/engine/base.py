"""The executor seam: where a run reads its input and computes the scores and embeddings missing from the cache.

The driver (:mod:`dqf.engine.driver`) owns everything else — the step loop, the caches, row
accounting, selectors and probes, outputs — and calls one executor for the heavy work. Two
executors are siblings over :class:`Executor`: :class:`dqf.engine.local.LocalExecutor` (this
process) and :class:`dqf.engine.ray.RayExecutor` (a Ray cluster). Each call names the step it
works for, so an executor never has to guess which step's settings apply.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterator

from dqf.errors import DqfError
from dqf.io.readers import read_input

if TYPE_CHECKING:
    import numpy as np
    import polars as pl

    from dqf.io.readers import ReadResult
    from dqf.plugin import Embedder, Plugin, Scorer
    from dqf.recipe import Recipe

#: ``derive(frame)``: ``frame`` with the derived columns a scorer reads (see :data:`dqf.DERIVED_COLUMNS`).
Derive = Callable[["pl.DataFrame"], "pl.DataFrame"]


class Executor:
    """Reads input, scores batches for a step, embeds missing texts, and says what it did for the manifest.

    The base reads the input in this process; subclasses compute. Every row handed to
    :meth:`score_batches` and every text handed to :meth:`embed_missing` must come back exactly
    once, in any order; caching, checks and accounting stay with the driver.
    """

    kind = "base"

    def __init__(self, recipe: "Recipe"):
        self.recipe = recipe
        self._setup_done: dict[int, "Plugin"] = {}

    def read_input(self, limit: int | None, advance) -> "ReadResult":
        """The recipe's input, read in this process in file order."""
        inp = self.recipe.model.input
        return read_input(self.recipe.input_path, fmt=inp.format, fields=inp.fields, on_bad_row=inp.on_bad_row,
                          limit=limit, progress=advance, split=inp.split)

    def score_batches(self, scorer: "Scorer", todo: "pl.DataFrame", *, batch_size: int, view: list[str],
                      derive: Derive | None, key: str, label: str, step_id: str
                      ) -> Iterator[tuple["pl.DataFrame", "pl.DataFrame"]]:
        """Yield ``(batch, scorer.score(batch.select(view)))`` over ``todo``, ``batch_size`` rows a call.

        ``batch`` needs only ``id`` and ``key``; ``derive``, when given, adds the derived columns
        ``view`` names; ``label`` prefixes errors.
        """
        raise NotImplementedError

    def embed_missing(self, embedder: "Embedder", texts: list[str], advance, *, label: str, step_id: str | None
                      ) -> Iterator[tuple["np.ndarray", "np.ndarray"]]:
        """Yield ``(positions, vectors)`` covering ``texts``, one cache shard's worth at a time."""
        raise NotImplementedError

    def generate(self, backend, model, prompts, *, label: str, step_id: str | None, **kwargs) -> tuple[list, dict]:
        """:meth:`dqf.StepContext.generate`: ``(answers, failed positions)``; the base opens ``backend`` here."""
        return backend.answer(model, prompts, **kwargs)

    def run_once(self, fn, kwargs: dict, *, label: str, plugin: "Plugin", step_id: str | None, progress) -> Any:
        """:meth:`dqf.StepContext.run_once`; the base runs ``fn`` here, its progress shown as ``label``."""
        return fn(progress=lambda total: progress(label, total), **kwargs)

    def record(self) -> dict[str, Any]:
        """Recorded in the manifest as ``engine``: which executor ran the steps, and how."""
        return {"kind": self.kind}

    def close(self) -> None:
        """Release what the run held: every plugin set up here (:meth:`dqf.Plugin.close`), a cluster it started."""
        for plugin in list(self._setup_done.values()):
            self.release(plugin)

    def release(self, plugin: "Plugin") -> None:
        """Close ``plugin`` if this executor set it up (its next use sets it up again)."""
        if self._setup_done.pop(id(plugin), None) is not None:
            plugin.close()

    def setup_once(self, plugin: "Plugin", label: str) -> None:
        """Call ``plugin.setup()`` the first time this executor uses it; a failure names ``label``."""
        if id(plugin) in self._setup_done:
            return
        try:
            plugin.setup()
        except DqfError as exc:  # say which step's model failed to load
            raise DqfError(*[line if line.startswith(f"{label}: ") else f"{label}: {line}" for line in exc.lines]
                           ) from None
        self._setup_done[id(plugin)] = plugin
