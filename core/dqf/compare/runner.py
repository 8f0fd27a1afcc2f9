"""`compare()`: loads the strategies and their pool, measures each one, writes compare.json and report.html."""

from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from dqf._version import __version__
from dqf.store.atomic import atomic_open
from dqf.errors import DqfError
from dqf.engine.progress import Reporter, Timer
from dqf.io.readers import display_path
from dqf.compare import measures
from dqf.compare.baselines import baselines as make_baselines
from dqf.compare.coverage import EXACT_MAX_PAIRS, coverage
from dqf.compare.embed import DEFAULT_EMBEDDER, build_embedder, embed_pool
from dqf.compare.labels import read_labels
from dqf.compare.pool import load_pool, mix_fields, score_columns
from dqf.compare.strategies import Strategy, attach_masks, load_strategies

#: Held-out rows drawn from the pool for --finetune when no --heldout file is given.
HELDOUT_ROWS = 64
#: compare.json's layout version; bump when a key changes meaning.
SCHEMA = 1


@dataclass
class CompareResult:
    out_dir: Path
    data: dict
    json_path: Path
    report_path: Path


def compare(args: Iterable[str | Path], *, out: str | Path = "runs/compare", baselines: bool = True, seed: int = 0,
            embedder: dict[str, Any] | bool | None = None, tokenizer: str | None = None,
            labels: Iterable[str | Path] = (), pool: str | Path | None = None,
            finetune: bool = False, finetune_options: dict[str, Any] | None = None,
            heldout: str | Path | None = None, cache_dir: str | Path | None = None, use_cache: bool = True,
            exact_below: int = EXACT_MAX_PAIRS, reporter: Reporter | None = None, host=None) -> CompareResult:
    """Compare the selections of run directories and recipes (``args``) on their shared pool.

    Writes ``compare.json`` (every number) and ``report.html`` (tables and inline SVG plots) into
    ``out``; recipes are run first into ``out/runs/<stem>``. See docs/compare.md for each number.

    ``embedder`` is a plugin spec (``{"plugin": ..., **options}``; default :data:`DEFAULT_EMBEDDER`)
    or ``False`` for no coverage numbers. ``finetune_options`` go to
    :func:`dqf.compare.finetune.finetune_eval` (the seed and cache settings are added).
    """
    from dqf.registry import build_plugin_manager
    from dqf.store import Store

    reporter = reporter or Reporter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t = Timer()
    cache_dir = Path(cache_dir) if cache_dir is not None else None
    strategies = load_strategies(list(args), out=out, cache_dir=cache_dir, use_cache=use_cache, reporter=reporter)
    timings["load"] = t.seconds

    t = Timer()
    the_pool = load_pool(strategies, Path(pool) if pool is not None else None)
    attach_masks(strategies, the_pool.ids)
    base_info = None
    if baselines:
        k = strategies[0].size
        strategies += make_baselines(the_pool, k, seed, strategies[0].name)
        base_info = {"size": k, "size_from": strategies[0].name, "seed": seed,
                     "random": "uniform over the pool, drawn over rows sorted by id",
                     "longest": "most whitespace-separated words in the output; ties in pool order"}
    timings["pool"] = t.seconds

    host = host or build_plugin_manager()
    cache_root = Store(cache_dir).root
    embedder_info, coverage_info = None, None
    if embedder is not False:  # False: no embedder, so no coverage section (nothing to load or embed)
        t = Timer()
        emb = build_embedder(host, dict(embedder or DEFAULT_EMBEDDER))
        X = embed_pool(emb, the_pool, cache_root, enabled=use_cache, reporter=reporter)
        timings["embed"] = t.seconds
        t = Timer()
        cov = {}
        with reporter.task("compare: coverage", len(strategies)) as advance:
            for s in strategies:
                cov[s.name] = coverage(X, np.flatnonzero(s.mask), exact_below=exact_below, seed=seed) \
                    if s.mask.any() else {"radius": None, "mean_nearest": None, "median_nearest": None,
                                          "search": None, "mean_pairwise": None, "pairs": 0, "pairs_sampled": False}
                advance(1)
        timings["coverage"] = t.seconds
        embedder_info = {**emb.describe(), "cache_key": emb.cache_key(), "dim": int(X.shape[1])}
        coverage_info = {"metric": "euclidean", "field": getattr(emb.options, "field", None),
                         "exact_below_pairs": exact_below, "strategies": cov}

    t = Timer()
    scores = score_columns(strategies, the_pool)
    score_values = {c: v["values"] for c, v in scores.items()}
    tok = _load_tokenizer(tokenizer) if tokenizer else None
    length_values = measures.lengths(the_pool, tok)
    score_dist = measures.distributions(score_values, strategies)
    for c, v in scores.items():
        score_dist[c] = {"runs": v["runs"], "boolean": v["boolean"], **score_dist[c]}
    length_dist = measures.distributions(length_values, strategies)
    label_sets = [ls for path in labels for ls in read_labels(path, the_pool)]
    ranked = {**score_values, **{f"length:{k}": v for k, v in length_values.items()}}
    agreement = measures.agreement(ranked, label_sets, strategies)
    timings["measures"] = t.seconds

    data: dict[str, Any] = {
        "schema": SCHEMA,
        "dqf_version": __version__,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "seed": seed,
        "pool": {"rows": the_pool.size, "input": the_pool.input, "from": strategies[0].name},
        "strategies": [s.describe() for s in strategies],
        "baselines": base_info,
        "embedder": embedder_info,
        "tokenizer": tokenizer,
        "overlap": measures.overlap(strategies),
        "coverage": coverage_info,
        "scores": score_dist,
        "lengths": length_dist,
        "mix": measures.mix(mix_fields(the_pool), strategies),
        "labels": agreement,
    }
    if finetune:
        t = Timer()
        ft_options = {"seed": seed, "use_cache": use_cache, **({"cache_dir": str(cache_dir)} if cache_dir else {}),
                      **(finetune_options or {})}
        data["finetune"] = _finetune(strategies, the_pool, host, ft_options, heldout, seed, reporter)
        timings["finetune"] = t.seconds
    data["seconds"] = {k: round(v, 3) for k, v in timings.items()}
    return write_outputs(data, out)


def write_outputs(data: dict, out: Path) -> CompareResult:
    """compare.json and report.html from ``data``, each written atomically."""
    from dqf.compare.report import render_html

    data = _jsonable(data)
    json_path, report_path = out / "compare.json", out / "report.html"
    with atomic_open(json_path) as fh:
        json.dump(data, fh, indent=2, ensure_ascii=False)
        fh.write("\n")
    with atomic_open(report_path) as fh:
        fh.write(render_html(data))
    return CompareResult(out, data, json_path, report_path)


def _jsonable(x):
    """Plain JSON values: numpy scalars unwrapped, NaN and infinities as null (JSON has neither)."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return [_jsonable(v) for v in x.tolist()]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _load_tokenizer(spec: str):
    from dqf.lm import load_tokenizer, resolve_model

    return load_tokenizer(resolve_model(spec, Path.cwd()))  # relative to where dqf runs


def _finetune(strategies: list[Strategy], pool, host, options: dict, heldout, seed: int, reporter: Reporter) -> dict:
    """Fine-tune one model per strategy under one budget and evaluate each on the same held-out rows."""
    import polars as pl

    try:
        from dqf.compare.finetune import finetune_eval
    except ImportError as exc:
        raise DqfError(f"dqf compare --finetune: the fine-tune evaluation could not be imported ({exc})") from None
    cols = ["instruction", "input", "output"]
    if heldout is not None:
        from dqf.io.readers import read_input

        held = read_input(Path(heldout), on_bad_row="quarantine").frame.select("id", *cols)
        source = display_path(Path(heldout))
    else:
        anywhere = np.logical_or.reduce([s.mask for s in strategies])
        free = np.flatnonzero(~anywhere)
        if not free.size:
            raise DqfError("dqf compare --finetune: every pool row is in some selection, so none is left to hold "
                           "out; pass --heldout FILE")
        take = np.sort(np.random.default_rng(seed).choice(free, size=min(HELDOUT_ROWS, free.size), replace=False))
        held = pool.frame[take].select("id", *cols)
        source = f"{take.size} pool rows in no selection (seed {seed})"
    held_ids = held["id"].implode()
    frames, dropped = {}, {}
    for s in strategies:
        rows = pool.frame.filter(pl.Series(s.mask))
        # A held-out row the model trained on would flatter that strategy's loss.
        keep = rows.filter(~pl.col("id").is_in(held_ids))
        dropped[s.name] = rows.height - keep.height
        frames[s.name] = keep.select(cols)
    results = finetune_eval(frames, heldout=held.select(cols), host=host, options=options, progress=reporter)
    return {"options": options, "heldout": {"source": source, "rows": held.height},
            "heldout_rows_removed_from_training": dropped, "strategies": results}
