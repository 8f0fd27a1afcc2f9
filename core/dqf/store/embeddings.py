"""The embedding cache: float32 vectors per (embedder configuration, text), stored as memory-mapped .npy shards."""

from __future__ import annotations

import hashlib
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from dqf.store.atomic import atomic_path, sweep_temporaries, write_parquet
from dqf.errors import DqfError

if TYPE_CHECKING:
    import numpy as np
    import polars as pl

    from dqf.plugin import Embedder

#: Texts per shard file: large enough to keep the file count low, small enough that a crash loses little.
SHARD_TEXTS = 4096
#: A shard is also closed once its texts took this long to embed (slow models): a crash loses at most
#: about this much work plus the batch in flight.
SHARD_SECONDS = 10.0
#: Results at least this large are gathered into a memory-mapped temporary file (in the cache folder)
#: instead of anonymous memory, so the kernel can page them out and k-center can stream them.
MEMMAP_MIN_BYTES = 64 << 20


def text_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def check_vectors(embedder: "Embedder", out, n: int) -> "np.ndarray":
    """``embedder.embed``'s result for ``n`` texts as float32, or a DqfError naming the embedder."""
    import numpy as np

    out = np.asarray(out, dtype=np.float32)
    if out.ndim != 2 or out.shape[0] != n:
        raise DqfError(f"embedder {embedder.name!r} returned shape {out.shape} for {n} texts")
    return out


def embed_in_shards(embedder: "Embedder", texts: list[str], advance: Callable[[int], None] | None = None):
    """Yield ``(positions, vectors)``: float32 vectors of ``texts[positions]``, a chunk of up to SHARD_TEXTS at a time.

    How missing embeddings are computed in one process (the embedder set up already). Each chunk
    becomes one cache shard; a chunk is closed early once it took :data:`SHARD_SECONDS`, so a slow
    model's work reaches the cache every few seconds.
    """
    import numpy as np

    for block in range(0, len(texts), SHARD_TEXTS):  # embed() calls never span a block (as the Ray engine's)
        stop = min(block + SHARD_TEXTS, len(texts))
        start, parts, opened = block, [], time.monotonic()
        for b in range(block, stop, embedder.batch_size):
            batch = texts[b:min(b + embedder.batch_size, stop)]
            parts.append(check_vectors(embedder, embedder.embed(batch), len(batch)))
            if advance:
                advance(len(batch))
            end = b + len(batch)
            if end == stop or time.monotonic() - opened >= SHARD_SECONDS:
                yield np.arange(start, end), np.concatenate(parts)
                start, parts, opened = end, [], time.monotonic()


#: ``compute(embedder, texts, advance)``: yields ``(positions, vectors)`` covering ``texts`` (see :func:`embed_in_shards`).
Compute = Callable[["Embedder", list, "Callable[[int], None] | None"], Iterator[tuple["np.ndarray", "np.ndarray"]]]


class EmbeddingStore:
    """Embeddings keyed by the embedder's cache key and a hash of each text.

    A shard is ``<uuid>.npy`` (float32, one row per text) plus ``<uuid>.keys.parquet``
    (the text hashes), the keys file renamed into place last: a shard without its keys
    file is invisible, so a killed run never leaves a torn shard that looks complete.
    """

    def __init__(self, root: Path, enabled: bool = True):
        #: The folder holding one sub-folder per embedder name (``<cache root>/embeddings``).
        self.root = Path(root)
        self.enabled = enabled
        self._setup_done: set[int] = set()
        self._swept: set[Path] = set()
        #: After :meth:`embed`: texts served from the cache (``hits``) and distinct texts embedded (``computed``).
        self.last_stats: dict[str, int] = {"hits": 0, "computed": 0}

    def directory(self, embedder: "Embedder") -> Path:
        return self.root / embedder.name / embedder.cache_key()

    def _index(self, directory: Path) -> tuple[list["np.ndarray"], "pl.DataFrame"]:
        """Memory-mapped vectors of every complete shard in ``directory`` and a frame (key, shard, row) over them.

        A shard is complete when its keys file exists (it is renamed into place after the vectors),
        so a shard being written by another run, or torn by a crash, is not seen. A key held by
        several shards (two runs embedding the same texts at once) is taken from the first.
        """
        import numpy as np
        import polars as pl

        shards: list[np.ndarray] = []
        frames = []
        if self.enabled and directory.is_dir():
            for keys_file in sorted(directory.glob("*.keys.parquet")):
                vec_file = keys_file.with_name(keys_file.name[:-len(".keys.parquet")] + ".npy")
                try:
                    keys = pl.read_parquet(keys_file, columns=["key"])["key"]
                    vecs = np.load(vec_file, mmap_mode="r")
                except Exception:
                    continue  # unreadable (or deleted meanwhile by `dqf cache clear`): its texts are embedded again
                if vecs.ndim != 2 or vecs.shape[0] != keys.len():
                    continue
                frames.append(self._entries(keys, len(shards)))
                shards.append(vecs)
        return shards, self._concat(frames)

    @staticmethod
    def _entries(keys: "pl.Series", shard: int) -> "pl.DataFrame":
        import polars as pl

        return pl.DataFrame({"key": keys.cast(pl.Binary)}).with_columns(
            pl.lit(shard, dtype=pl.UInt32).alias("shard"), pl.int_range(keys.len(), dtype=pl.UInt32).alias("row"))

    @staticmethod
    def _concat(frames: list) -> "pl.DataFrame":
        import polars as pl

        if not frames:
            return pl.DataFrame(schema={"key": pl.Binary, "shard": pl.UInt32, "row": pl.UInt32})
        return pl.concat(frames).unique(subset="key", keep="first", maintain_order=True)

    def _write_shard(self, directory: Path, keys: "pl.Series", vecs: "np.ndarray") -> None:
        """Write one shard: the vectors, then the keys file that makes it visible."""
        import numpy as np
        import polars as pl

        if not self.enabled:
            return
        directory.mkdir(parents=True, exist_ok=True)
        if directory not in self._swept:  # temporaries of runs killed while writing here
            sweep_temporaries(directory)
            self._swept.add(directory)
        name = uuid.uuid4().hex
        with atomic_path(directory / f"{name}.npy") as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, np.ascontiguousarray(vecs, dtype=np.float32))
        write_parquet(pl.DataFrame({"key": keys}, schema={"key": pl.Binary}), directory / f"{name}.keys.parquet")

    def embed(self, embedder: "Embedder", texts: list[str], advance: Callable[[int], None] | None = None, *,
              compute: Compute | None = None) -> "np.ndarray":
        """Return ``float32`` embeddings of ``texts`` in order, computing only texts not cached yet with ``compute``
        (default: :func:`embed_in_shards` here, the embedder set up on first use).

        Cached vectors are gathered shard by shard from the memory-mapped shard files; each chunk of
        computed vectors is written as a shard as soon as it is ready (so a killed run keeps it) and
        copied into the result. The result is a memory-mapped temporary file when it is large
        (:data:`MEMMAP_MIN_BYTES`), so it can be paged out and k-center can stream it. ``last_stats``
        then holds ``hits`` (texts served from the cache) and ``computed`` (distinct texts embedded).
        """
        import numpy as np
        import polars as pl

        directory = self.directory(embedder)
        req = pl.DataFrame({"key": pl.Series(map(text_key, texts), dtype=pl.Binary)}).with_row_index("pos")
        shards, index = self._index(directory)
        if not texts:
            self.last_stats = {"hits": 0, "computed": 0}
            return np.zeros((0, int(shards[0].shape[1]) if shards else 0), dtype=np.float32)
        req = req.join(index, on="key", how="left", maintain_order="left")
        del index
        missing = req.filter(pl.col("shard").is_null()).select("pos", "key")
        hits = req.filter(pl.col("shard").is_not_null()).sort("shard", "row")
        del req
        todo = missing.unique(subset="key", keep="first", maintain_order=True)
        self.last_stats = {"hits": hits.height, "computed": todo.height}
        dims = {int(shards[s].shape[1]) for s in hits["shard"].unique().to_list()}
        out = None

        def check_dims(what: str):
            if len(dims) > 1:
                raise DqfError(f"embedding cache {directory} holds vectors of different sizes {sorted(dims)}"
                               f"{what}; run `dqf cache clear`")

        check_dims("")
        if dims:
            out = self._output(len(texts), next(iter(dims)))
            # Gather shard by shard, rows in file order, so each memory-mapped file is read once, sequentially.
            shard_ids, rows, pos = (hits[c].to_numpy() for c in ("shard", "row", "pos"))
            bounds = np.flatnonzero(np.diff(shard_ids)) + 1
            for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(shard_ids)]):
                out[pos[lo:hi]] = shards[int(shard_ids[lo])][rows[lo:hi]]
            del shard_ids, rows, pos
        del shards, hits
        if todo.height:
            todo_keys = todo["key"]
            todo_texts = [texts[p] for p in todo["pos"].to_numpy()]
            # Every position whose text is todo[t], ordered by t (a text may occur at several positions).
            where = missing.join(todo.select("key", pl.int_range(todo.height, dtype=pl.Int64).alias("t")),
                                 on="key").sort("t")
            t_sorted, t_pos = where["t"].to_numpy(), where["pos"].to_numpy()
            del missing, where
            done = 0
            if compute is None:
                if id(embedder) not in self._setup_done:
                    embedder.setup()
                    self._setup_done.add(id(embedder))
                compute = embed_in_shards
            for positions, vecs in compute(embedder, todo_texts, advance):
                positions = np.asarray(positions, dtype=np.int64)
                done += len(positions)
                self._write_shard(directory, todo_keys.gather(positions), vecs)
                dims.add(int(vecs.shape[1]))
                check_dims(" and the embedder returned others")
                if out is None:
                    out = self._output(len(texts), vecs.shape[1])
                order = np.argsort(positions, kind="stable")
                lo = np.searchsorted(t_sorted, positions[order], "left")
                counts = np.searchsorted(t_sorted, positions[order], "right") - lo
                starts = np.repeat(lo - (np.cumsum(counts) - counts), counts) + np.arange(counts.sum())
                out[t_pos[starts]] = vecs[np.repeat(order, counts)]
            if done != todo.height:
                raise DqfError(f"embedder {embedder.name!r}: {todo.height - done} texts came back without vectors")
        return out

    def _output(self, n: int, dim: int) -> "np.ndarray":
        """An empty float32 (n, dim) array: a memory-mapped temporary file (deleted on close) when large."""
        import numpy as np
        import tempfile

        if n * dim * 4 < MEMMAP_MIN_BYTES:
            return np.empty((n, dim), dtype=np.float32)
        folder = self.root if self.enabled else None
        try:
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)
            fh = tempfile.TemporaryFile(dir=folder, prefix=".result-")
        except OSError:
            fh = tempfile.TemporaryFile(prefix=".dqf-embeddings-")
        with fh:  # the mapping keeps the (unnamed) file alive; it is freed when the array is
            return np.memmap(fh, dtype=np.float32, mode="w+", shape=(n, dim))
