"""Base classes every scorer, selector, probe, embedder and backend derives from, and the context the engine hands
them."""

from __future__ import annotations

import hashlib
import json
import math
from fractions import Fraction
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Optional, Sequence

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:  # polars and numpy are imported lazily so entry-point modules import fast
    import numpy as np
    import polars as pl

    from dqf.lm.backends import ModelSource

#: Columns every row has before any step runs (the canonical view of a row).
BASE_COLUMNS: dict[str, str] = {
    "id": "str",
    "instruction": "str",
    "input": "str",
    "output": "str",
    "n_turns": "int",
}

#: Columns a scorer may name in ``requires()`` although no step produces them: the engine derives them
#: from each row's original record, only for the rows that scorer scores (they are not kept in the
#: table). ``turns`` is the whole conversation, a list of ``{role, content}`` (see :func:`dqf.rows.conversation`).
DERIVED_COLUMNS: dict[str, str] = {"turns": "list[struct[role: str, content: str]]"}

#: A Boolean column a scorer may add to what ``score()`` returns: rows where it is true failed for a
#: reason a rerun may not meet (a request that ran out of retries, a timeout). Their declared columns
#: are used in this run (typically null, with a reason), but they are **not cached**, so the next run
#: scores them again. Rows without the flag (or with false) are cached as usual.
FAILED_COLUMN = "_failed"


class PluginOptions(BaseModel):
    """Typed options of a plugin. Unknown keys are errors, so a recipe typo never becomes a silent default; types are
    strict (`k = true` or `k = "3"` is not an integer) and NaN or infinity is no number an option takes."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class BudgetOptions(PluginOptions):
    """Options of a selector that keeps an absolute ``k`` or a ``fraction`` of its input rows, never both."""

    k: Optional[int] = Field(default=None, gt=0, description="Keep this many rows (all of them if fewer).")
    fraction: Optional[float] = Field(default=None, gt=0, le=1, description="Keep this fraction of the input rows.")

    @model_validator(mode="after")
    def _one_budget(self):
        if (self.k is None) == (self.fraction is None):
            raise ValueError("give exactly one of `k` or `fraction`")
        return self

    def budget(self, n: int) -> int:
        """Rows to keep out of ``n``."""
        if self.k is not None:
            return min(self.k, n)
        # Exact decimal arithmetic: 0.07 * 100 is 7.000000000000001 in floats, which would round up to 8.
        return min(n, math.ceil(Fraction(repr(self.fraction)) * n))


class PluginSpec(BaseModel):
    """A plugin named inside another plugin's options, e.g. ``embedder = { plugin = "hf-encoder", pooling = "cls" }``.

    The recipe loader validates the named plugin's options and instantiates it; the owning
    plugin finds the instance in ``self.nested[field_name]``.
    """

    model_config = ConfigDict(extra="allow", frozen=True)
    plugin: str

    def plugin_options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


@dataclass(frozen=True)
class Workspace:
    """Where a plugin's paths point: the recipe's folder and the run's cache. Set on every plugin before it runs.

    ``base_dir`` is what relative paths in its options (a model folder, a reference file) resolve
    against: the recipe's folder. ``cache_dir`` is the cache root of the run, where a GGUF model is
    converted once (``None`` outside a run: then nothing is written).
    """

    base_dir: Optional[Path] = None
    cache_dir: Optional[Path] = None


class Plugin:
    """Common shape of scorers, selectors, probes and embedders.

    Subclasses set ``name`` (unique across all installed plugins), ``Options`` (a
    :class:`PluginOptions` subclass) and may bump ``version`` whenever a change alters
    the numbers they produce, which invalidates cached results.
    """

    kind: ClassVar[str] = "plugin"
    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    Options: ClassVar[type[PluginOptions]] = PluginOptions
    #: Option fields holding a :class:`PluginSpec`, and the kind of plugin each must name.
    nested_plugins: ClassVar[dict[str, str]] = {}
    #: Options that change speed but not results (e.g. ``batch_size``): left out of the cache key.
    cache_ignore: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, options: PluginOptions | None = None):
        self.options = options if options is not None else self.Options()
        #: Instances of the plugins named in ``nested_plugins`` fields, set by the recipe loader.
        self.nested: dict[str, Plugin] = {}
        #: Counters a plugin fills while it runs (see :meth:`count`); :meth:`stats` reports them.
        self._stats: dict[str, Any] = {}
        #: Set by the recipe loader and the engine; see :class:`Workspace`.
        self.workspace = Workspace()

    def bind(self, workspace: "Workspace") -> None:
        """Set ``workspace`` on this plugin and every plugin nested in it."""
        self.workspace = workspace
        for plugin in self.nested.values():
            plugin.bind(workspace)

    def count(self, key: str, n: int = 1) -> None:
        """Add ``n`` to the counter ``key`` that :meth:`stats` reports (e.g. ``rows_scored``)."""
        self._stats[key] = self._stats.get(key, 0) + n

    def nested_plugin(self, field: str) -> "Plugin":
        """The instance built for the nested spec in option ``field`` (e.g. ``"embedder"``)."""
        plugin = self.nested.get(field)
        if plugin is None:
            from dqf.errors import DqfError

            raise DqfError(f"{self.name}: no {field!r} plugin was built; build {self.name!r} from a recipe "
                           f"(which instantiates `{field}`) or set .nested[{field!r}]")
        return plugin

    def check(self) -> None:
        """Validate what options alone cannot (e.g. a nested judge's columns); raise ``ValueError`` with a message.

        Called by the recipe loader after nested plugins are built, so ``dqf validate`` reports
        the problem with its key path instead of a run failing hours in.
        """

    def stats(self) -> dict[str, Any]:
        """Counters recorded in the manifest after the step ran (e.g. rows truncated)."""
        return dict(self._stats)

    def close(self) -> None:
        """Release what ``setup()`` loaded (a model, an engine, a connection); a later ``setup()`` loads it again.

        The engine calls it when the run is done with the plugin: a scorer's right after its step (so
        the next step's model has the memory, and an engine's threads stop while the process is
        whole), every other plugin it set up when the run ends. Default: nothing to release.
        """

    def nested_requires(self, field: str) -> set[str]:
        """Columns the nested plugin in option ``field`` reads (none before the recipe loader built it)."""
        plugin = self.nested.get(field)
        return set(plugin.requires()) if plugin is not None else set()

    def requires(self) -> set[str]:
        """Columns this plugin reads beyond the base columns; validated before anything runs."""
        return set()

    def depends_on(self) -> list[str]:
        """Ids of other steps whose results this plugin reads (e.g. a seed set)."""
        return []

    def identity(self) -> dict[str, Any]:
        """What, besides name, version and options, determines this plugin's output (e.g. a model's file hash).

        Part of the cache key. Called after ``setup()`` is *not* guaranteed, so keep it cheap.
        """
        return {}

    def cache_key(self) -> str:
        payload = {
            "plugin": self.name,
            "version": self.version,
            "options": self.options.model_dump(mode="json", exclude=set(self.cache_ignore)),
            "identity": self.identity(),
            "nested": {k: p.cache_key() for k, p in sorted(self.nested.items())},
        }
        blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str)
        return hashlib.blake2b(blob.encode(), digest_size=12).hexdigest()

    def describe(self) -> dict[str, Any]:
        """Recorded in the manifest: what ran, with which options and models."""
        return {
            "plugin": self.name,
            "kind": self.kind,
            "version": self.version,
            "options": self.options.model_dump(mode="json"),
            **({"identity": self.identity()} if self.identity() else {}),
            **({"nested": {k: p.describe() for k, p in self.nested.items()}} if self.nested else {}),
        }


class Scorer(Plugin):
    """Adds columns to batches of rows.

    A scorer is stateless apart from :meth:`setup`, which loads models once per process;
    :meth:`score` sees one batch at a time and must return a frame of the same height with
    exactly the columns :meth:`columns` declares. That contract lets the engine cache
    results per row and lets a distributed engine run the scorer inside worker actors.
    """

    kind: ClassVar[str] = "scorer"
    #: Rows per call to :meth:`score` unless the recipe step sets ``batch_size``.
    batch_size: ClassVar[int] = 1024
    #: Derived columns (:data:`DERIVED_COLUMNS`, e.g. ``turns``) the scorer uses when a batch has them and does
    #: without otherwise (a judge scoring one generated answer): the engine adds them to a step's batches, but
    #: they are not a requirement, so the scorer still fits where they cannot exist.
    optional_columns: ClassVar[frozenset[str]] = frozenset()

    def columns(self) -> dict[str, "pl.DataType"]:
        """Names and polars dtypes of the columns :meth:`score` returns."""
        raise NotImplementedError

    def setup(self) -> None:
        """Load models or other heavy state. Called once, before the first batch."""

    def score(self, batch: "pl.DataFrame") -> "pl.DataFrame":
        """Return the declared columns for ``batch`` (same height, same row order).

        May add a Boolean :data:`FAILED_COLUMN` marking rows that failed transiently: those are not cached.
        """
        raise NotImplementedError


class Selector(Plugin):
    """Picks a subset of a set of rows. It decides; it does not score."""

    kind: ClassVar[str] = "selector"

    def select(self, rows: "pl.DataFrame", context: "StepContext") -> "Selection":
        """Return the rows to keep: a boolean mask aligned with ``rows``, or positions into ``rows``."""
        raise NotImplementedError

    def drop_reason(self) -> str:
        """Why a row this selector did not keep was dropped; recorded per row in ``rows.parquet``."""
        return f"not picked by {self.name}"


class Probe(Plugin):
    """Model-aware column producer: may train or run a model on other steps' results (e.g. a seed set)."""

    kind: ClassVar[str] = "probe"

    def columns(self) -> dict[str, "pl.DataType"]:
        raise NotImplementedError

    def run(self, rows: "pl.DataFrame", context: "StepContext") -> "pl.DataFrame":
        """Return the declared columns for ``rows`` (same height, same order)."""
        raise NotImplementedError


class Embedder(Plugin):
    """Turns texts into fixed-size float32 vectors. Shared by selectors and scorers; results are cached per text."""

    kind: ClassVar[str] = "embedder"
    #: Texts per call to :meth:`embed`.
    batch_size: ClassVar[int] = 64

    def setup(self) -> None:
        """Load the model. Called once, before the first :meth:`embed`."""

    def embed(self, texts: list[str]) -> "np.ndarray":
        """Return a ``float32`` array of shape ``(len(texts), dim)``."""
        raise NotImplementedError

    def texts(self, rows: "pl.DataFrame") -> list[str]:
        """The text of each row this embedder embeds: its ``field`` option (see :func:`dqf.row_texts`)."""
        return row_texts(rows, getattr(self.options, "field", "instruction"))


class Backend(Plugin):
    """Where a model plugin's answers and token probabilities come from: transformers in this process, a vLLM
    engine, or an inference server. Plugins never call a model library for these; they call their backend.

    A plugin names its backend in its options (``backend = { plugin = "vllm", tensor_parallel_size = 2 }``,
    default ``transformers``) and hands it token ids it rendered itself, so the prompt text — the chat
    template included — is dqf's on every backend. The plugin owns the calls: :meth:`open` once, any of
    :meth:`generate`, :meth:`next_token_logprobs`, :meth:`answer_losses`, then :meth:`close`.
    """

    kind: ClassVar[str] = "backend"
    #: What this backend computes, a subset of ``{"generate", "beam_search", "next_token", "answer_losses"}``;
    #: a plugin checks it at validation, so a missing capability is an error before any work starts.
    capabilities: ClassVar[frozenset[str]] = frozenset()

    def results_identity(self) -> dict:
        """What changes the numbers this backend returns for the same model and inputs (its precision, its
        engine), for the caller's cache key. Options that change only speed are left out."""
        return {"backend": self.name}

    def open(self, model: "ModelSource", *, device: Any = None, dtype: Any = None) -> None:
        """Load or connect to ``model`` (a :class:`dqf.lm.ModelSource`: weights, an optional LoRA adapter, the
        tokenizer); ``device``/``dtype`` are the calling plugin's choice, where the backend has one."""
        raise NotImplementedError

    def generate(self, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, num_beams: int = 1,
                 batch_size: int | None = None, on_batch: Callable[[list[int], list], None] | None = None) -> list:
        """Deterministic answers to tokenized ``prompts``, in order: greedy (or ``num_beams`` beam search),
        only the new tokens, decoded without special tokens and stripped. A prompt the backend could not
        answer (a failed request) is ``None``; :meth:`failures` says why. ``batch_size`` is the caller's
        batch for in-process backends (engines and servers schedule their own); ``on_batch(positions,
        texts)`` runs after each finished batch, so the caller can cache it."""
        raise NotImplementedError

    def next_token_logprobs(self, prompts: Sequence[Sequence[int]],
                            token_sets: Sequence[Sequence[int]]) -> "np.ndarray":
        """``out[i, j]``: log of the total probability of the ids in ``token_sets[j]`` as the next token after
        ``prompts[i]`` (NaN where it could not be computed)."""
        raise NotImplementedError

    def answer_losses(self, prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]]) -> "np.ndarray":
        """Mean negative log-likelihood (nats per token) of each ``answers[i]`` given ``prompts[i]`` (NaN when
        there is no answer token)."""
        raise NotImplementedError

    def failures(self) -> dict[int, str]:
        """Positions of the last call's prompts that failed, and why (empty for in-process backends)."""
        return {}

    def close(self) -> None:
        """Free the model (or the connection); the plugin that opened the backend calls it."""

    def answer(self, model: "ModelSource", prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
               num_beams: int = 1, batch_size: int | None = None,
               on_batch: Callable[[list[int], list], None] | None = None, device: Any = None,
               dtype: Any = None) -> tuple[list, dict[int, str]]:
        """:meth:`open` on ``model``, :meth:`generate`, :meth:`close`: ``(answers, failed positions with their
        reasons)``. How one process generates (see :meth:`StepContext.generate`); not for overriding."""
        self.open(model, device=device, dtype=dtype)
        try:
            texts = self.generate(prompts, max_new_tokens=max_new_tokens, num_beams=num_beams,
                                  batch_size=batch_size, on_batch=on_batch)
            return texts, self.failures()
        finally:
            self.close()


def row_texts(rows: "pl.DataFrame", field: str) -> list[str]:
    """Text of each row for ``field``.

    ``instruction``, ``output`` or any other string column are taken as they are; ``prompt``
    is the MoDS question (:func:`dqf.lm.question`: the instruction, then a newline and the input
    when the input is non-empty); ``both`` is the prompt, a newline, then the output.
    """
    import polars as pl

    from dqf.lm.prompts import question_expr

    if field == "prompt":
        expr = question_expr()
    elif field == "both":
        expr = pl.concat_str([question_expr(), pl.col("output")], separator="\n")
    else:
        expr = pl.col(field).cast(pl.String)
    return rows.select(expr.fill_null("").alias("t"))["t"].to_list()


Selection = "pl.Series | Sequence[int] | Iterable[int]"


@dataclass
class StepContext:
    """What the engine tells a selector or probe about the run it is part of."""

    step_id: str
    seed: int
    run_dir: Any
    cache_dir: Any
    _step_rows: Any = field(default=None, repr=False)
    _embeddings: Any = field(default=None, repr=False)
    _score: Any = field(default=None, repr=False)
    _progress: Any = field(default=None, repr=False)
    _artifacts: Any = field(default=None, repr=False)
    _generate: Any = field(default=None, repr=False)
    _run_once: Any = field(default=None, repr=False)

    def step_rows(self, step_id: str) -> "pl.DataFrame":
        """Rows (with every column computed so far) in the result of an earlier step, or ``"input"``."""
        return self._step_rows(step_id)

    def embeddings(self, embedder: "Embedder", rows: "pl.DataFrame", field: str | None = None) -> "np.ndarray":
        """``float32`` embeddings of ``rows`` (``field`` overrides the embedder's own), through the embedding cache."""
        texts = row_texts(rows, field) if field is not None else embedder.texts(rows)
        return self._embeddings(embedder, texts)

    def score(self, scorer: "Scorer", rows: "pl.DataFrame") -> "pl.DataFrame":
        """Run ``scorer`` over ``rows`` (which need ``id`` and the base columns) through the score cache."""
        return self._score(scorer, rows)

    def progress(self, description: str, total: int | None = None):
        """A context manager yielding ``advance(n=1)``, shown as a progress bar with rows/s."""
        return self._progress(description, total)

    def artifact_dir(self, plugin: "Plugin", key: str) -> Path:
        """A folder in the cache for large artifacts (fine-tuned weights, ...), stable for ``key``."""
        return self._artifacts(plugin, key)

    def generate(self, backend: "Backend", model: "ModelSource", prompts: Sequence[Sequence[int]], *,
                 max_new_tokens: int, num_beams: int = 1, batch_size: int | None = None,
                 on_batch: Callable[[list[int], list], None] | None = None, device: Any = None,
                 dtype: Any = None) -> tuple[list, dict[int, str]]:
        """Answers to tokenized ``prompts`` from ``backend`` opened on ``model`` (a :class:`dqf.lm.ModelSource`), and
        the positions that failed with their reasons.

        The engine decides where: the local engine opens the backend in this process, answers and
        closes it; the Ray engine spreads the prompts over an actor pool (``[engine.steps.<id>]`` /
        ``[engine.plugins.<backend>]``: ``num_gpus``, ``concurrency``), each actor opening the backend
        once, from ``model``'s files (a model only in memory, ``model.loaded``, stays here).
        ``on_batch(positions, texts)`` runs here as answers arrive, so the caller can cache them.
        """
        kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, num_beams=num_beams, batch_size=batch_size,
                                      on_batch=on_batch, device=device, dtype=dtype)
        if self._generate is None:
            return backend.answer(model, prompts, **kwargs)
        return self._generate(backend, model, prompts, **kwargs)

    def run_once(self, fn: Callable[..., Any], /, *, label: str, **kwargs: Any) -> Any:
        """``fn(progress=..., **kwargs)`` run once where the engine puts one-off heavy work (fine-tuning a seed
        model): in this process (``progress`` is :meth:`progress`, shown as ``label``), or on the Ray engine
        as one task with the step's ``num_gpus``/``num_cpus`` (``progress`` is None there). ``fn`` must be a
        module-level function, ``kwargs`` and its result picklable, and what it writes go to the cache,
        which every node sees."""
        if self._run_once is None:
            return fn(progress=lambda total: self.progress(label, total), **kwargs)
        return self._run_once(fn, label, kwargs)
