"""The Ray executor: input shards read, and rows missing from the caches scored and embedded, on a Ray cluster.

Everything else is the driver's (:mod:`dqf.engine.driver`), as in a local run: accounting, the
score and embedding caches (same keys, one shard per batch, written by the driver as results
arrive), selectors and probes (on the driver), outputs and manifest. A folder of shards is read
by one Ray task per file (:func:`read_shard`, the local reader on one file) and merged on the
driver in file order, as one sequential read would count it. Scoring and embedding are Ray
Data ``map_batches`` over the missing rows only:

- plugins that load a model (a :class:`dqf.ModelMixin`, a ``setup()`` of their own, or such a
  nested plugin) run in an actor pool: each actor rebuilds the plugin from its recipe spec and
  loads the model once;
- other scorers run as Ray tasks, the plugin built once per worker process.

A worker that resolves a plugin to a different cache key than the driver (other model files,
another device or dtype) refuses to run, so results are never cached under the wrong key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import socket
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from dqf.engine.base import Executor
from dqf.errors import DqfError, require
from dqf.plugin import Embedder, Plugin, Scorer, Workspace
from dqf.recipe import WorkerConfig
from dqf.store.embeddings import SHARD_TEXTS, check_vectors

#: Column a worker returns instead of results when a batch failed: the driver raises it as one
#: readable line (the remote traceback rides along for --debug) rather than Ray's wrapped traceback.
ERROR_COLUMN = "_dqf_error"
TRACEBACK_COLUMN = "_dqf_traceback"
#: Most blocks one map is cut into; past it a block holds several batches (never a part of one).
MAX_BLOCKS = 1000
RAY_USER = "the Ray engine (--engine ray)"
#: Prompts per generation call on an actor: each finished block is cached on the driver.
GENERATE_BLOCK = 64


def import_ray():
    """``ray`` with Ray Data, or the one-line error saying how to install it."""
    ray = require("ray", package="ray[data]", extra="ray", user=RAY_USER)
    require("ray.data", package="ray[data]", extra="ray", user=RAY_USER)
    return ray


# -- on the workers ------------------------------------------------------------------------------
@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to rebuild a plugin exactly as the recipe loader built it on the driver."""

    kind: str
    name: str
    options: dict
    local_modules: tuple[str, ...]
    recipe_dir: str
    cache_dir: str
    key: str  # the driver's cache key for this plugin
    describe: dict  # the driver's describe(), to say what differs when the keys do not match
    label: str  # how errors name it, e.g. "quality (reward-model)"

    @property
    def token(self) -> str:
        blob = json.dumps([self.kind, self.name, self.options, self.local_modules, self.recipe_dir, self.cache_dir,
                           self.key], sort_keys=True, default=str)
        return hashlib.blake2b(blob.encode(), digest_size=12).hexdigest()

    @property
    def workspace(self) -> Workspace:
        """Relative model paths resolve against the recipe and GGUF conversions go to the run's cache, as on the driver."""
        return Workspace(base_dir=Path(self.recipe_dir), cache_dir=Path(self.cache_dir))


_HOSTS: dict[tuple, Any] = {}
_PLUGINS: dict[str, Plugin] = {}
_KEEP_PLUGINS = 4  # task workers live on between maps: keep only the last few plugins (and models) built


def worker_plugin(spec: WorkerSpec) -> Plugin:
    """The plugin for ``spec`` in this worker process: built, checked against the driver's key and set up once."""
    plugin = _PLUGINS.get(spec.token)
    if plugin is not None:
        return plugin
    from dqf.recipe import instantiate
    from dqf.registry import build_plugin_manager

    host = _HOSTS.get(spec.local_modules)
    if host is None:
        host = _HOSTS[spec.local_modules] = build_plugin_manager([Path(p) for p in spec.local_modules])
    errors: list[str] = []
    plugin = instantiate(host, spec.kind, {"plugin": spec.name, **spec.options}, spec.name, errors,
                         workspace=spec.workspace)
    if plugin is None:
        raise DqfError(*[f"{spec.label}: cannot rebuild the plugin on Ray worker {socket.gethostname()}: {e}"
                         for e in errors])
    key = plugin.cache_key()
    if key != spec.key:
        diff = "; ".join(_differences(plugin.describe(), spec.describe)) or "options"
        raise DqfError(f"{spec.label}: resolves differently on Ray worker {socket.gethostname()} than on the "
                       f"driver ({diff}), so its results would be cached under the wrong key; give every node "
                       f"the same model files and set `device` and `dtype` in the plugin's options explicitly")
    plugin.setup()
    while len(_PLUGINS) >= _KEEP_PLUGINS:
        _PLUGINS.pop(next(iter(_PLUGINS)))
    _PLUGINS[spec.token] = plugin
    return plugin


def _differences(here: Any, there: Any, path: str = "") -> list[str]:
    if isinstance(here, dict) and isinstance(there, dict):
        out = []
        for k in sorted(set(here) | set(there), key=str):
            out += _differences(here.get(k), there.get(k), f"{path}.{k}" if path else str(k))
        return out
    return [] if here == there else [f"{path}: {here!r} here, {there!r} on the driver"]


def _failure(label: str, exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, DqfError):  # say which step, as the local engine does for a model that fails to load
        lines = [line if line.startswith(f"{label}: ") else f"{label}: {line}" for line in exc.lines]
    else:
        lines = [f"{label}: failed on Ray worker {socket.gethostname()}: {type(exc).__name__}: {exc}"]
    return "\n".join(lines), "".join(traceback.format_exception(exc))


def score_batch(batch, *, spec: WorkerSpec, view: list[str], keep: list[str]):
    """Ray Data UDF: ``keep`` columns of ``batch`` (a pyarrow table) beside what the scorer returns for ``view``."""
    import polars as pl
    import pyarrow as pa

    try:
        scorer = worker_plugin(spec)
        frame = pl.from_arrow(batch)
        out = scorer.score(frame.select(view))
        if not isinstance(out, pl.DataFrame):
            raise DqfError(f"{spec.label}: returned {type(out).__name__}, expected a polars DataFrame")
        if out.height != frame.height:
            raise DqfError(f"{spec.label}: returned {out.height} rows for a batch of {frame.height}")
        out = out.select([c for c in out.columns if c not in keep])
        return pl.concat([frame.select(keep), out], how="horizontal").to_arrow()
    except Exception as exc:
        message, tb = _failure(spec.label, exc)
        return pa.table({ERROR_COLUMN: [message], TRACEBACK_COLUMN: [tb]})


def embed_batch(batch, *, spec: WorkerSpec):
    """Ray Data UDF: float32 vectors of ``batch["text"]``, with their positions."""
    import numpy as np

    try:
        embedder = worker_plugin(spec)
        texts = batch["text"].tolist()
        vecs = check_vectors(embedder, embedder.embed(texts), len(texts))
        return {"pos": batch["pos"], "vec": vecs}
    except Exception as exc:
        message, tb = _failure(spec.label, exc)
        return {ERROR_COLUMN: np.array([message]), TRACEBACK_COLUMN: np.array([tb])}


_BACKENDS: dict[tuple, Plugin] = {}


def worker_backend(spec: WorkerSpec, model, device, dtype) -> Plugin:
    """The backend for ``spec`` in this actor, opened on ``model`` once (the actor keeps it for every batch)."""
    key = (spec.token, model.path, model.adapter)
    backend = _BACKENDS.get(key)
    if backend is not None:
        return backend
    for old in list(_BACKENDS):  # an actor serves one model at a time
        _BACKENDS.pop(old).close()
    from dqf.recipe import instantiate
    from dqf.registry import build_plugin_manager

    host = _HOSTS.get(spec.local_modules)
    if host is None:
        host = _HOSTS[spec.local_modules] = build_plugin_manager([Path(p) for p in spec.local_modules])
    errors: list[str] = []
    backend = instantiate(host, "backend", {"plugin": spec.name, **spec.options}, spec.name, errors)
    if backend is None:
        raise DqfError(*[f"{spec.label}: cannot rebuild the backend on Ray worker {socket.gethostname()}: {e}"
                         for e in errors])
    if device is None or getattr(device, "type", device) == "cpu":
        from dqf.lm.models import pick_device

        device = pick_device("auto")  # the driver may have no GPU where this actor has one
    backend.open(model, device=device, dtype=dtype)
    _BACKENDS[key] = backend
    return backend


def generate_batch(batch, *, spec: WorkerSpec, model, device, dtype, max_new_tokens: int, num_beams: int,
                   batch_size: int | None):
    """Ray Data UDF: answers to ``batch["prompt"]`` (token ids) with their positions and failure reasons."""
    import pyarrow as pa

    try:
        backend = worker_backend(spec, model, device, dtype)
        prompts = batch["prompt"].to_pylist()
        texts = backend.generate(prompts, max_new_tokens=max_new_tokens, num_beams=num_beams, batch_size=batch_size)
        failed = backend.failures()
        return pa.table({"pos": batch["pos"], "text": pa.array(texts, pa.string()),
                         "failure": pa.array([failed.get(i) for i in range(len(texts))], pa.string())})
    except Exception as exc:
        message, tb = _failure(spec.label, exc)
        return pa.table({ERROR_COLUMN: [message], TRACEBACK_COLUMN: [tb]})


def run_task(fn: Callable, kwargs: dict, label: str):
    """Ray task: ``fn(progress=None, **kwargs)``, or ``(ERROR_COLUMN, message, traceback)`` when it fails."""
    try:
        return fn(progress=None, **kwargs)
    except Exception as exc:
        message, tb = _failure(label, exc)
        return (ERROR_COLUMN, message, tb)


def read_shard(path: str, shown: str, *, fmt: str, fields: dict | None, on_bad_row: str):
    """Ray task: one input file read as the local engine reads it; a failure comes back in ``FilePart.error``."""
    from dqf.io.readers import FilePart, read_file

    try:
        return read_file(Path(path), fmt=fmt, fields=fields, on_bad_row=on_bad_row, raise_errors=False, shown=shown)
    except Exception as exc:  # e.g. the file is not on this node's file system
        return FilePart(shown, "", 0, None, error=[f"input.path: {shown}: cannot be read on Ray worker "
                                                    f"{socket.gethostname()}: {type(exc).__name__}: {exc}"])


class PluginActor:
    """A Ray Data actor: rebuilds the plugin and loads its model once, in the constructor, then maps batches."""

    def __init__(self, fn: Callable, fn_kwargs: dict):
        self.fn, self.kwargs = fn, fn_kwargs
        try:
            if fn is generate_batch:
                k = fn_kwargs
                worker_backend(k["spec"], k["model"], k["device"], k["dtype"])
            else:
                worker_plugin(fn_kwargs["spec"])
        except Exception:
            pass  # not cached, so the first batch fails the same way and reports it as one line

    def __call__(self, batch):
        return self.fn(batch, **self.kwargs)


class RemoteTraceback(Exception):
    """The worker's traceback, chained to the one-line error (shown with --debug)."""


# -- on the driver -------------------------------------------------------------------------------
def loads_model(plugin: Plugin) -> bool:
    """Whether ``plugin`` (or one nested in it) has a model or other state loaded by ``setup()``."""
    from dqf.lm.models import ModelMixin

    if isinstance(plugin, ModelMixin):
        return True
    base = Embedder.setup if isinstance(plugin, Embedder) else Scorer.setup if isinstance(plugin, Scorer) else None
    if base is not None and type(plugin).setup is not base:
        return True
    return any(loads_model(p) for p in plugin.nested.values())


class RayExecutor(Executor):
    """Scorers and embedders mapped over the rows missing from the cache on a Ray cluster; shards read by Ray tasks."""

    kind = "ray"

    def __init__(self, recipe):
        self.ray = import_ray()  # before any work: without ray the run fails at once, saying how to install it
        super().__init__(recipe)
        self.config = recipe.model.engine
        self._started = False  # dqf started the cluster (and shuts it down after the run)
        self._connected = False
        self._maps: list[dict] = []
        self._reads: dict | None = None  # set when the input was read by Ray tasks
        self._cluster: dict[str, float] = {}

    def close(self):
        super().close()
        if self._started:
            self.ray.shutdown()
            self._started = self._connected = False

    def _connect(self) -> None:
        """Join (or start) the cluster on first use: a rerun whose work is all cached needs none."""
        import os

        if self._connected:
            return
        ray = self.ray
        if not ray.is_initialized():
            address = self.config.address
            local = address is None and not os.environ.get("RAY_ADDRESS")
            try:
                ray.init(address=address, logging_level=logging.WARNING,
                         **({"include_dashboard": False} if local else {}))
            except Exception as exc:
                where = address or os.environ.get("RAY_ADDRESS") or "a new local cluster"
                raise DqfError(f"engine.address: cannot start or reach the Ray cluster at {where}: "
                               f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                               ) from None
            self._started = True
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # dqf shows its own progress per step
        ctx.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled": we know
        self._cluster = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU", "memory")}
        self._connected = True

    # -- input: shards read in parallel, merged on the driver in file order
    def read_input(self, limit, advance):
        from dqf.io.readers import display_path, input_files, merge_parts

        inp = self.recipe.model.input
        files = input_files(self.recipe.input_path, inp.split)
        if len(files) < 2 or limit is not None or self.config.read == "driver":
            return super().read_input(limit, advance)  # one file, or a --limit that must stop in file order
        self._connect()
        task = self.ray.remote(read_shard).options(num_cpus=1)
        fields = dict(inp.fields) if inp.fields else None
        refs = [task.remote(str(f.resolve()), display_path(f), fmt=inp.format, fields=fields,
                            on_bad_row=inp.on_bad_row) for f in files]
        parts: dict = {}
        pending = list(refs)
        while pending:
            ready, pending = self.ray.wait(pending, num_returns=1)
            for ref in ready:
                part = parts[ref] = self.ray.get(ref)
                if advance:
                    advance(part.rows_read)
        self._reads = {"files": len(files), "tasks": len(refs)}
        return merge_parts([parts[r] for r in refs], self.recipe.input_path)

    def worker_options(self, plugin: Plugin, step_id: str | None) -> WorkerConfig:
        """Engine defaults, then ``[engine.plugins.<name>]``, then ``[engine.steps.<id>]``: keys set later win."""
        cfg = self.config
        merged = {f: getattr(cfg, f) for f in WorkerConfig.model_fields}
        step_cfg = cfg.steps.get(step_id) if step_id is not None else None
        for layer in (cfg.plugins.get(plugin.name), step_cfg):
            if layer is not None:
                merged.update({f: getattr(layer, f) for f in layer.model_fields_set})
        return WorkerConfig(**merged)

    def _spec(self, plugin: Plugin, label: str) -> WorkerSpec:
        return WorkerSpec(
            kind=plugin.kind, name=plugin.name,
            options=plugin.options.model_dump(mode="python", by_alias=True),
            local_modules=tuple(str((self.recipe.base_dir / p).resolve()) for p in self.recipe.model.plugins),
            # the workspace the driver bound: workers resolve models and convert GGUF files as it does
            recipe_dir=str(plugin.workspace.base_dir), cache_dir=str(Path(plugin.workspace.cache_dir).resolve()),
            key=plugin.cache_key(), describe=plugin.describe(), label=label)

    # -- scoring and embedding -----------------------------------------------------------------------
    def score_batches(self, scorer, todo, *, batch_size, view, derive, key, label, step_id):
        import polars as pl

        if derive is not None:  # derived columns come from the raw records, which stay on the driver
            todo = derive(todo)
        keep = list(dict.fromkeys(["id", key]))
        frame = todo.select(*dict.fromkeys([*keep, *view]))  # only the columns the scorer reads travel
        spec = self._spec(scorer, label)
        for block in self._map(scorer, spec, frame, batch_size, batch_size, score_batch,
                               {"view": view, "keep": keep}, "pyarrow", step_id):
            result = pl.from_arrow(block)
            for piece in result.iter_slices(batch_size):  # one cache shard per batch, as the local engine writes
                yield piece.select(keep), piece.drop(keep)

    def embed_missing(self, embedder, texts, advance, *, label, step_id) -> Iterator[tuple[Any, Any]]:
        import numpy as np
        import polars as pl

        frame = pl.DataFrame({"pos": np.arange(len(texts), dtype=np.int64), "text": texts},
                             schema={"pos": pl.Int64, "text": pl.String})
        spec = self._spec(embedder, label)
        # Blocks of SHARD_TEXTS texts, batched from their start: the same embed() calls as the local engine makes.
        for block in self._map(embedder, spec, frame, embedder.batch_size, SHARD_TEXTS, embed_batch, {}, "numpy",
                               step_id):
            pos = np.asarray(block["pos"], dtype=np.int64)
            vecs = np.asarray(block["vec"], dtype=np.float32)
            for start in range(0, len(pos), SHARD_TEXTS):
                if advance:
                    advance(len(pos[start:start + SHARD_TEXTS]))
                yield pos[start:start + SHARD_TEXTS], vecs[start:start + SHARD_TEXTS]

    def generate(self, backend, model, prompts, *, label, step_id, max_new_tokens, num_beams=1, batch_size=None,
                 on_batch=None, device=None, dtype=None):
        """Answers from an actor pool, each actor opening ``backend`` on ``model``'s files once; results reach
        ``on_batch`` on the driver as blocks finish."""
        import dataclasses

        import polars as pl

        if not prompts:
            return [], {}
        if model.loaded is not None:  # actors load from disk: a model trained here was saved (its folder is there)
            model = dataclasses.replace(model, loaded=None)
        frame = pl.DataFrame({"pos": list(range(len(prompts))), "prompt": [list(p) for p in prompts]},
                             schema={"pos": pl.Int64, "prompt": pl.List(pl.Int64)})
        spec = self._spec(backend, label)
        texts: list = [None] * len(prompts)
        failed: dict[int, str] = {}
        kwargs = {"model": model, "device": device, "dtype": dtype, "max_new_tokens": max_new_tokens,
                  "num_beams": num_beams, "batch_size": batch_size}
        for block in self._map(backend, spec, frame, GENERATE_BLOCK, GENERATE_BLOCK, generate_batch, kwargs,
                               "pyarrow", step_id, actors=True):
            pos = block["pos"].to_pylist()
            got = block["text"].to_pylist()
            for i, t, why in zip(pos, got, block["failure"].to_pylist()):
                texts[i] = t
                if why is not None:
                    failed[i] = why
            if on_batch is not None:
                on_batch(pos, got)
        return texts, failed

    def run_once(self, fn, kwargs, *, label, plugin, step_id, progress):
        """One Ray task with the step's resources (a GPU for fine-tuning, where ``num_gpus`` asks for one)."""
        self._connect()
        opts = self.worker_options(plugin, step_id)
        resources = {"num_cpus": opts.num_cpus if opts.num_cpus is not None else 1}
        if opts.num_gpus:
            resources["num_gpus"] = opts.num_gpus
            self._check_gpus(opts.num_gpus, label)
        self._maps.append({"step": step_id, "plugin": plugin.name, "compute": "task", "task": fn.__name__,
                           **{k: float(v) for k, v in resources.items()}})
        with progress(label, None):
            out = self.ray.get(self.ray.remote(run_task).options(**resources).remote(fn, kwargs, label))
        if isinstance(out, tuple) and len(out) == 3 and out[0] == ERROR_COLUMN:
            raise DqfError(*out[1].splitlines()) from RemoteTraceback(out[2])
        return out

    # -- Ray Data --------------------------------------------------------------------------------
    def _map(self, plugin: Plugin, spec: WorkerSpec, frame, batch_size: int, block_rows: int, fn: Callable,
             fn_kwargs: dict, batch_format: str, step_id: str | None, actors: bool | None = None) -> Iterator[Any]:
        """Run ``fn`` over ``frame`` on the cluster, ``batch_size`` rows per call; yield result blocks as they arrive."""
        import ray.data as rd

        self._connect()
        opts = self.worker_options(plugin, step_id)
        n = frame.height
        # Blocks hold whole batches, so every call sees the rows the local engine would hand it.
        per_block = block_rows * max(1, math.ceil(math.ceil(n / block_rows) / MAX_BLOCKS))
        table = frame.to_arrow()
        blocks = [table.slice(i, per_block) for i in range(0, n, per_block)]
        ds = rd.from_arrow(blocks)
        resources = {}
        if opts.num_cpus is not None:
            resources["num_cpus"] = opts.num_cpus
        if opts.num_gpus:
            resources["num_gpus"] = opts.num_gpus
            self._check_gpus(opts.num_gpus, spec.label)
        if actors is None:
            actors = opts.compute == "actors" or (opts.compute == "auto" and loads_model(plugin))
        if actors:
            # never more actors (each loading the model) than blocks to hand them
            size = min(opts.concurrency or self._default_actors(opts.num_gpus), len(blocks))
            ds = ds.map_batches(PluginActor, fn_constructor_kwargs={"fn": fn, "fn_kwargs": {"spec": spec, **fn_kwargs}},
                                batch_size=batch_size, batch_format=batch_format,
                                compute=rd.ActorPoolStrategy(size=size), **resources)
        else:
            size = min(opts.concurrency, len(blocks)) if opts.concurrency else None
            ds = ds.map_batches(fn, fn_kwargs={"spec": spec, **fn_kwargs}, batch_size=batch_size,
                                batch_format=batch_format, compute=rd.TaskPoolStrategy(size=size), **resources)
        self._maps.append({"step": step_id, "plugin": plugin.name,
                           "compute": "actors" if actors else "tasks", "concurrency": size, "rows": n,
                           **({"num_gpus": opts.num_gpus} if opts.num_gpus else {}),
                           **({"num_cpus": opts.num_cpus} if opts.num_cpus is not None else {})})
        for block in ds.iter_batches(batch_size=None, batch_format=batch_format):
            names = block.column_names if batch_format == "pyarrow" else list(block)
            if ERROR_COLUMN in names:
                message = block[ERROR_COLUMN][0]
                tb = block[TRACEBACK_COLUMN][0]
                message, tb = (message.as_py(), tb.as_py()) if batch_format == "pyarrow" else (str(message), str(tb))
                raise DqfError(*message.splitlines()) from RemoteTraceback(tb)
            yield block

    def _default_actors(self, num_gpus: float | None) -> int:
        """One actor per GPU share when GPUs are asked for; one otherwise (raise `concurrency` for more)."""
        if num_gpus:
            return max(1, int(self._cluster.get("GPU", 0) // num_gpus))
        return 1

    def _check_gpus(self, num_gpus: float, label: str) -> None:
        have = self._cluster.get("GPU", 0)
        if have < num_gpus and self._started:  # a cluster dqf started will never grow GPUs: Ray would wait forever
            raise DqfError(f"{label}: asks for num_gpus = {num_gpus} per worker, but the Ray cluster has "
                           f"{have:g} GPU(s)")

    def record(self) -> dict:
        return {"kind": "ray", "address": self.config.address, "ray_version": getattr(self.ray, "__version__", None),
                "cluster": self._cluster, "read": self._reads or {"on": "driver"}, "maps": self._maps}
