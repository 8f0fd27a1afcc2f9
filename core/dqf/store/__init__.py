"""The run cache: one :class:`Store` owns the folder layout under the cache root; its parts live beside it.

::

    <root>/scores/<plugin>/<key>/        per-batch parquet shards of a scorer's columns (scores.py)
    <root>/embeddings/<embedder>/<key>/  memory-mapped .npy shards of vectors (embeddings.py)
    <root>/artifacts/<plugin>/<key>/     large step results: fine-tuned weights, generations
    <root>/models/                       GGUF checkpoints converted once (dqf.lm.models)

Every file is written through :mod:`dqf.store.atomic`. Each part's folder holds a marker file
(:data:`MARKER`) from the moment dqf makes it: ``dqf cache clear`` deletes marked folders only, so a
``--cache-dir`` pointed at a folder of the user's own never loses their ``models/`` or ``artifacts/``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from dqf.store.embeddings import EmbeddingStore
from dqf.store.scores import CacheEntry

if TYPE_CHECKING:
    from dqf.plugin import Plugin

SCORES_DIR = "scores"
EMBEDDINGS_DIR = "embeddings"
ARTIFACTS_DIR = "artifacts"
#: Where :func:`dqf.lm.load_model` converts GGUF checkpoints (pass ``Store.models_dir``).
MODELS_DIR = "models"
#: The file that proves dqf made a cache part's folder.
MARKER = ".dqf-cache"
_MARKER_TEXT = "This folder is part of a dqf cache; `dqf cache clear` deletes it.\n"


def default_cache_dir() -> Path:
    """``$DQF_CACHE_DIR``, else ``$XDG_CACHE_HOME/dqf``, else ``~/.cache/dqf``."""
    env = os.environ.get("DQF_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "dqf"


class Store:
    """A cache root: score entries, the embedding store and artifact folders under it. ``enabled=False`` stores nothing."""

    #: What dqf keeps under its cache root; :meth:`clear` deletes these and nothing else it finds there.
    PARTS = (SCORES_DIR, EMBEDDINGS_DIR, ARTIFACTS_DIR, MODELS_DIR)

    def __init__(self, root: Path | None = None, enabled: bool = True):
        self.root = Path(root) if root is not None else default_cache_dir()
        self.enabled = enabled
        self._marked: set[str] = set()
        self._embeddings: EmbeddingStore | None = None

    def _part(self, name: str) -> Path:
        """The folder of part ``name``; made, with its marker, the first time a run that caches asks for it."""
        path = self.root / name
        if self.enabled and name not in self._marked:
            path.mkdir(parents=True, exist_ok=True)
            marker = path / MARKER
            if not marker.exists():
                marker.write_text(_MARKER_TEXT, encoding="utf-8")
            self._marked.add(name)
        return path

    @property
    def embeddings(self) -> EmbeddingStore:
        if self._embeddings is None:
            self._embeddings = EmbeddingStore(self._part(EMBEDDINGS_DIR), self.enabled)
        return self._embeddings

    def scores(self, plugin: "Plugin", upstream: str = "") -> CacheEntry:
        """The score entry of ``plugin``; ``upstream`` identifies the producers of the columns it reads."""
        key = plugin.cache_key()
        if upstream:
            key = hashlib.blake2b(f"{key}|{upstream}".encode(), digest_size=12).hexdigest()
        return CacheEntry(self._part(SCORES_DIR) / plugin.name / key, plugin, self.enabled)

    @property
    def models_dir(self) -> Path:
        return self._part(MODELS_DIR)

    def artifact_dir(self, owner: str, key: str = "") -> Path:
        """A folder for large results of ``owner`` (a plugin's name): fine-tuned weights, generations; stable for ``key``."""
        return self._part(ARTIFACTS_DIR) / owner / key if key else self._part(ARTIFACTS_DIR) / owner

    def clear(self) -> tuple[int, list[Path]]:
        """Delete every part folder dqf made (its :data:`MARKER` says so); returns the bytes freed and the
        part-named folders left alone because nothing proves dqf made them."""
        size, kept = 0, []
        for part in self.PARTS:
            d = self.root / part
            if not d.is_dir():
                continue
            if not (d / MARKER).is_file():
                kept.append(d)
                continue
            size += sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
            shutil.rmtree(d)
        self._marked.clear()
        return size, kept
