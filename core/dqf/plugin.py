"""Base classes every scorer, selector and probe derives from, and the context the engine hands them."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Sequence

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:  # polars is imported lazily so entry-point modules import fast
    import polars as pl

#: Columns every row has before any step runs (the canonical view of a row).
BASE_COLUMNS: dict[str, str] = {
    "id": "str",
    "instruction": "str",
    "input": "str",
    "output": "str",
    "n_turns": "int",
}


class PluginOptions(BaseModel):
    """Typed options of a plugin. Unknown keys are errors, so a recipe typo never becomes a silent default."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Plugin:
    """Common shape of scorers, selectors and probes.

    Subclasses set ``name`` (unique across all installed plugins), ``Options`` (a
    :class:`PluginOptions` subclass) and may bump ``version`` whenever a change alters
    the numbers they produce, which invalidates cached results.
    """

    kind: ClassVar[str] = "plugin"
    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    Options: ClassVar[type[PluginOptions]] = PluginOptions

    def __init__(self, options: PluginOptions | None = None):
        self.options = options if options is not None else self.Options()

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
            "options": self.options.model_dump(mode="json"),
            "identity": self.identity(),
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

    def columns(self) -> dict[str, "pl.DataType"]:
        """Names and polars dtypes of the columns :meth:`score` returns."""
        raise NotImplementedError

    def setup(self) -> None:
        """Load models or other heavy state. Called once, before the first batch."""

    def score(self, batch: "pl.DataFrame") -> "pl.DataFrame":
        """Return the declared columns for ``batch`` (same height, same row order)."""
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


Selection = "pl.Series | Sequence[int] | Iterable[int]"


@dataclass
class StepContext:
    """What the engine tells a selector or probe about the run it is part of."""

    step_id: str
    seed: int
    run_dir: Any
    cache_dir: Any
    _step_rows: Any = field(default=None, repr=False)

    def step_rows(self, step_id: str) -> "pl.DataFrame":
        """Rows (with every column computed so far) in the result of an earlier step, or ``"input"``."""
        return self._step_rows(step_id)
