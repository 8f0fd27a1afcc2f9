"""The :class:`dqf.StepContext` the driver hands a selector or probe: earlier steps' rows, cached embeddings and
scores, progress and artifact folders, all bound to the step that asked."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dqf.engine.progress import Timer
from dqf.errors import DqfError
from dqf.plugin import StepContext

if TYPE_CHECKING:
    from dqf.recipe import Step


def step_context(engine, step: "Step", table, results) -> StepContext:
    """The context of ``step`` in the run of ``engine`` (the driver, :class:`dqf.engine.driver.Engine`); ``table``
    holds every row so far, ``results`` each step's rows."""
    import polars as pl

    store, executor, reporter = engine.store, engine.executor, engine.reporter

    def step_rows(step_id: str):
        if step_id not in results:
            raise DqfError(f"step {step.id!r} asked for rows of {step_id!r}, which has not run")
        return table.filter(pl.col("_idx").is_in(results[step_id].implode())).drop("_raw")

    def embeddings(embedder, texts):
        t = Timer()
        label = f"{step.id}: embed ({embedder.name})"

        def compute(emb, todo, advance):
            return executor.embed_missing(emb, todo, advance, label=label, step_id=step.id)

        with reporter.task(label, None) as advance:
            out = store.embeddings.embed(embedder, texts, advance, compute=compute)
        stats = engine._embed_stats.setdefault(step.id, {"hits": 0, "computed": 0, "seconds": 0.0})
        for k, v in store.embeddings.last_stats.items():
            stats[k] = stats.get(k, 0) + v
        stats["seconds"] = round(stats["seconds"] + t.seconds, 4)
        return out

    def score(scorer, rows):
        scored, _ = engine._score_rows(scorer, dict(scorer.columns()), rows, label=f"{step.id}: {scorer.name}",
                                       step_id=step.id, key="id",
                                       what=f"scorer {scorer.name!r} (inside step {step.id!r})")
        return rows.select("id").join(scored, on="id", how="left", maintain_order="left").drop("id")

    def generate(backend, model, prompts, **kwargs):
        return executor.generate(backend, model, prompts, label=f"{step.id}: generate ({backend.name})",
                                 step_id=step.id, **kwargs)

    return StepContext(step_id=step.id, seed=engine.recipe.seed, run_dir=engine.run_dir, cache_dir=store.root,
                       _step_rows=step_rows, _embeddings=embeddings, _score=score, _progress=reporter.task,
                       _artifacts=lambda plugin, key: store.artifact_dir(plugin.name, key), _generate=generate,
                       _run_once=lambda fn, label, kwargs: executor.run_once(fn, kwargs, label=label, plugin=step.plugin,
                                                                             step_id=step.id, progress=reporter.task))
