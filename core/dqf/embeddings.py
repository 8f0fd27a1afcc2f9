"""On-disk embedding cache: float32 vectors per (embedder configuration, text), stored as memory-mapped .npy shards."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .atomic import atomic_path, write_parquet
from .errors import DqfError

if TYPE_CHECKING:
    import numpy as np

    from .plugin import Embedder

#: Texts per shard file: large enough to keep the file count low, small enough that a crash loses little.
SHARD_TEXTS = 4096


def text_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


class EmbeddingStore:
    """Embeddings keyed by the embedder's cache key and a hash of each text.

    A shard is ``<uuid>.npy`` (float32, one row per text) plus ``<uuid>.keys.parquet``
    (the text hashes), the keys file renamed into place last: a shard without its keys
    file is invisible, so a killed run never leaves a torn shard that looks complete.
    """

    def __init__(self, root: Path, enabled: bool = True):
        self.root = Path(root)
        self.enabled = enabled
        self._setup_done: set[int] = set()

    def directory(self, embedder: "Embedder") -> Path:
        return self.root / "embeddings" / embedder.name / embedder.cache_key()

    def _index(self, directory: Path):
        import numpy as np
        import polars as pl

        shards, index = [], {}
        if not (self.enabled and directory.is_dir()):
            return shards, index
        for keys_file in sorted(directory.glob("*.keys.parquet")):
            vec_file = keys_file.with_name(keys_file.name.replace(".keys.parquet", ".npy"))
            try:
                keys = pl.read_parquet(keys_file)["key"].to_list()
                vecs = np.load(vec_file, mmap_mode="r")
            except Exception:
                continue  # unreadable shard: its texts are simply embedded again
            if vecs.shape[0] != len(keys):
                continue
            s = len(shards)
            shards.append(vecs)
            for i, k in enumerate(keys):
                index.setdefault(k, (s, i))
        return shards, index

    def _write_shard(self, directory: Path, keys: list[bytes], vecs: "np.ndarray") -> None:
        import numpy as np
        import polars as pl

        if not self.enabled:
            return
        directory.mkdir(parents=True, exist_ok=True)
        name = uuid.uuid4().hex
        with atomic_path(directory / f"{name}.npy") as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, np.ascontiguousarray(vecs, dtype=np.float32))
        write_parquet(pl.DataFrame({"key": keys}, schema={"key": pl.Binary}), directory / f"{name}.keys.parquet")

    def embed(self, embedder: "Embedder", texts: list[str], advance: Callable[[int], None] | None = None) -> "np.ndarray":
        """Return ``float32`` embeddings of ``texts`` in order, computing only texts not cached yet."""
        import numpy as np

        directory = self.directory(embedder)
        keys = [text_key(t) for t in texts]
        shards, index = self._index(directory)
        todo: dict[bytes, str] = {}
        for k, t in zip(keys, texts):
            if k not in index and k not in todo:
                todo[k] = t
        fresh: dict[bytes, tuple[int, int]] = {}
        fresh_arrays: list[np.ndarray] = []
        if todo:
            if id(embedder) not in self._setup_done:
                embedder.setup()
                self._setup_done.add(id(embedder))
            items = list(todo.items())
            for start in range(0, len(items), SHARD_TEXTS):
                chunk = items[start:start + SHARD_TEXTS]
                parts = []
                for b in range(0, len(chunk), embedder.batch_size):
                    batch = [t for _, t in chunk[b:b + embedder.batch_size]]
                    out = np.asarray(embedder.embed(batch), dtype=np.float32)
                    if out.ndim != 2 or out.shape[0] != len(batch):
                        raise DqfError(f"embedder {embedder.name!r} returned shape {out.shape} for {len(batch)} texts")
                    parts.append(out)
                    if advance:
                        advance(len(batch))
                vecs = np.concatenate(parts)
                self._write_shard(directory, [k for k, _ in chunk], vecs)
                s = len(fresh_arrays)
                fresh_arrays.append(vecs)
                for i, (k, _) in enumerate(chunk):
                    fresh[k] = (s, i)
        dims = {a.shape[1] for a in [*shards, *fresh_arrays]}
        if len(dims) > 1:
            raise DqfError(f"embedding cache {directory} holds vectors of different sizes {sorted(dims)}; "
                           f"run `dqf cache clear`")
        if not texts:
            return np.zeros((0, dims.pop() if dims else 0), dtype=np.float32)
        out = np.empty((len(texts), dims.pop()), dtype=np.float32)
        # Gather shard by shard so each memory-mapped file is read with one fancy index.
        for source, lookup in ((shards, index), (fresh_arrays, fresh)):
            by_shard: dict[int, tuple[list[int], list[int]]] = {}
            for pos, k in enumerate(keys):
                hit = lookup.get(k)
                if hit is not None and (source is fresh_arrays or k not in fresh):
                    rows_out, rows_in = by_shard.setdefault(hit[0], ([], []))
                    rows_out.append(pos)
                    rows_in.append(hit[1])
            for s, (rows_out, rows_in) in by_shard.items():
                out[np.asarray(rows_out)] = source[s][np.asarray(rows_in)]
        return out
