"""The score cache: per-plugin-configuration shards of (row id -> columns), written atomically per batch."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from dqf.store.atomic import atomic_open, sweep_temporaries, write_parquet

if TYPE_CHECKING:
    import polars as pl

    from dqf.plugin import Plugin


#: An entry with more shards than this is merged into one after a step that wrote to it (see CacheEntry.compact).
COMPACT_ABOVE = 64
#: Merged shards' names start with this, so they sort before the per-batch (uuid-named) ones and win ties.
_MERGED_PREFIX = "0000-merged-"


class CacheEntry:
    """Cached columns of one plugin configuration, keyed by row id.

    The key covers plugin name, version, options and model identity; the row id is a hash
    of the row's content. Each batch is its own parquet shard, written with a rename, so a
    killed run loses only the batches in flight and concurrent runs never see torn files.
    Runs sharing the folder may write shards for the same rows; :meth:`load` keeps one per id.
    """

    def __init__(self, directory: Path, plugin: "Plugin", enabled: bool = True):
        self.dir = directory
        self.enabled = enabled
        self.plugin = plugin
        self._swept = False

    def load(self, columns: list[str]) -> "pl.DataFrame | None":
        import polars as pl

        if not self.enabled or not self.dir.is_dir():
            return None
        shards = sorted(self.dir.glob("*.parquet"))
        if not shards:
            return None
        frames = []
        for shard in shards:
            try:
                frames.append(pl.read_parquet(shard, columns=["id", *columns]))
            except Exception:
                continue  # a shard from an older plugin layout: recompute those rows instead of failing
        if not frames:
            return None
        # Shards in name order, first one wins: two runs that scored the same rows at once wrote
        # both, and every later run takes the same one of them.
        return pl.concat(frames, how="vertical_relaxed").unique(subset="id", keep="first", maintain_order=True)

    def compact(self, above: int = COMPACT_ABOVE) -> int:
        """Merge the entry's shards into one when there are more than ``above``; returns how many were merged.

        A model scorer writes one shard per batch (a few dozen rows), so a million-row step
        leaves tens of thousands of files, which every later run lists and opens. The merged
        shard keeps exactly what :meth:`load` would return (one row per id, first shard wins)
        and is written before the shards it replaces are deleted, so a run killed in between
        leaves duplicates, never a gap. A run reading the entry at that moment may miss a
        deleted shard; it then recomputes those rows, as for any shard it cannot read.
        Shards written by other runs after the listing are left alone.
        """
        import polars as pl

        if not self.enabled or not self.dir.is_dir():
            return 0
        shards = sorted(self.dir.glob("*.parquet"))
        if len(shards) <= above:
            return 0
        frames, merged = [], []
        for shard in shards:
            try:
                frames.append(pl.read_parquet(shard))
            except Exception:
                continue  # unreadable (an older layout): left in place, load() skips it too
            merged.append(shard)
        if len(merged) < 2:
            return 0
        whole = pl.concat(frames, how="diagonal_relaxed").unique(subset="id", keep="first", maintain_order=True)
        write_parquet(whole, self.dir / f"{_MERGED_PREFIX}{uuid.uuid4().hex}.parquet")
        for shard in merged:
            try:
                shard.unlink()
            except FileNotFoundError:  # another run merged it first
                pass
        return len(merged)

    def write(self, frame: "pl.DataFrame") -> None:
        if not self.enabled or frame.height == 0:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self._swept:  # temporaries of runs killed while writing here (never a live writer's)
            sweep_temporaries(self.dir)
            self._swept = True
        meta = self.dir / "plugin.json"
        if not meta.exists():
            with atomic_open(meta) as fh:
                json.dump(self.plugin.describe(), fh, indent=2, default=str)
        write_parquet(frame, self.dir / f"{uuid.uuid4().hex}.parquet")
