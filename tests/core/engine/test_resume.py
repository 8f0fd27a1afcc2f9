"""Crash safety of the score and embedding caches: kill a real `dqf run` with SIGKILL mid-step and rerun it;
run two at once on one cache.

The slow scorer and embedder live in a local plugin module written into the test's folder (loaded
through the recipe's ``plugins`` list); ``DQF_TEST_DELAY`` makes each of their batches sleep, so a run
spends seconds inside a step and the test can kill it there. Each logs what it computes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from dqf.store import MARKER
from dqf.store.atomic import _host, sweep_temporaries
from dqf.store.embeddings import SHARD_TEXTS

PLUGIN = '''
import os
import time
import zlib
from pathlib import Path

import dqf

HERE = Path(__file__).parent
DELAY = float(os.environ.get("DQF_TEST_DELAY", "0"))


def _log(name, values):
    with open(HERE / name, "a", encoding="utf-8") as fh:
        fh.write("".join(f"{v}\\n" for v in values))


class SlowLen(dqf.Scorer):
    """Instruction length; sleeps DQF_TEST_DELAY per batch and logs the ids it scores."""

    name = "slow-len"
    batch_size = 500

    def columns(self):
        import polars as pl
        return {"len_score": pl.Int64}

    def score(self, batch):
        import polars as pl
        _log(f"score_calls.{os.getpid()}.txt", batch["id"])
        time.sleep(DELAY)
        return batch.select(pl.col("instruction").str.len_chars().cast(pl.Int64).alias("len_score"))


class SlowHash(dqf.Embedder):
    """8-d vectors seeded by each text's CRC; sleeps DQF_TEST_DELAY per call and logs the texts it embeds."""

    name = "slow-hash"
    batch_size = 512

    def embed(self, texts):
        import numpy as np
        _log(f"embed_calls.{os.getpid()}.txt", [zlib.crc32(t.encode()) for t in texts])
        time.sleep(DELAY)
        return np.stack([np.random.default_rng(zlib.crc32(t.encode())).standard_normal(8) for t in texts]
                        ).astype(np.float32)


@dqf.hookimpl
def dqf_register_scorers(register):
    register(SlowLen)


@dqf.hookimpl
def dqf_register_embedders(register):
    register(SlowHash)
'''

RECIPE = """
name = "resume"
plugins = ["slow.py"]

[input]
path = "pool.jsonl"

[output]
dir = "out"

[[steps]]
id = "len"
score = { plugin = "slow-len" }
where = "len_score > 0"

[[steps]]
id = "cover"
select = { plugin = "kcenter", k = 40, embedder = { plugin = "slow-hash" } }
"""


def _dqf() -> str:
    exe = shutil.which("dqf", path=str(Path(sys.executable).parent)) or shutil.which("dqf")
    assert exe, "the dqf console script is not installed"
    return exe


@pytest.fixture
def project(tmp_path, write_jsonl, write_recipe):
    def make(n: int) -> Path:
        (tmp_path / "slow.py").write_text(PLUGIN, encoding="utf-8")
        write_jsonl([{"instruction": f"Question {i}: what is {i} plus {i % 7}?", "input": "",
                      "output": f"It is {i + i % 7}."} for i in range(n)])
        return write_recipe(RECIPE)

    return make


def start(tmp_path: Path, recipe: Path, cache: Path, out: Path, delay: float) -> subprocess.Popen:
    env = {**os.environ, "DQF_TEST_DELAY": str(delay)}
    return subprocess.Popen([_dqf(), "run", str(recipe), "--cache-dir", str(cache), "--out", str(out)],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def kill_when(proc: subprocess.Popen, ready, timeout: float = 90) -> None:
    """SIGKILL ``proc`` as soon as ``ready()`` holds; fail if it ends first."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()}"
        assert time.monotonic() < deadline, "timed out waiting for the run to reach the step"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err


def score_shards(cache: Path) -> list[Path]:
    return sorted(cache.glob("scores/slow-len/*/*.parquet"))


def embedding_shards(cache: Path) -> list[Path]:
    return sorted(cache.glob("embeddings/slow-hash/*/*.keys.parquet"))


def logged(tmp_path: Path, what: str, pid: int) -> list[str]:
    path = tmp_path / f"{what}_calls.{pid}.txt"
    return path.read_text().splitlines() if path.exists() else []


def check_no_torn_files(cache: Path) -> None:
    """Every file is a complete shard, its metadata, or a writer's temporary (which no reader globs for)."""
    for path in cache.rglob("*"):
        if not path.is_file():
            continue
        if path.name.endswith(".tmp"):
            assert path.name.startswith(".") and f".{_host()}-" in path.name, path
        elif path.name.endswith(".parquet"):
            pl.read_parquet(path)  # never torn: written whole, then renamed
        elif path.name.endswith(".npy"):
            np.load(path)
        else:
            assert path.name in ("plugin.json", MARKER), path


def outputs(out: Path) -> tuple[pl.DataFrame, list[dict]]:
    rows = pl.read_parquet(out / "rows.parquet").sort("id")
    selected = sorted((json.loads(line) for line in (out / "selected.jsonl").read_text().splitlines()),
                      key=lambda r: r["instruction"])
    return rows, selected


def step(manifest: dict, step_id: str) -> dict:
    return next(s for s in manifest["steps"] if s["id"] == step_id)


def test_killed_run_resumes_computing_only_what_was_lost(tmp_path, project):
    n = 10_000  # 20 score batches, then 3 embedding shards (4096, 4096, 1808 texts)
    recipe = project(n)
    cache, out = tmp_path / "cache", tmp_path / "out"
    clean = start(tmp_path, recipe, tmp_path / "clean-cache", tmp_path / "clean-out", delay=0)

    # 1. killed inside the scorer step, after a few batches reached the cache
    first = start(tmp_path, recipe, cache, out, delay=0.1)
    kill_when(first, lambda: len(score_shards(cache)) >= 3)
    check_no_torn_files(cache)
    cached = pl.concat([pl.read_parquet(p) for p in score_shards(cache)])["id"]
    assert 3 * 500 <= cached.n_unique() < n  # killed mid-step
    # what it logged beyond the cache was in flight: at most one batch
    assert len(set(logged(tmp_path, "score", first.pid)) - set(cached)) <= 500
    assert not (out / "manifest.json").exists()

    # 2. rerun, killed inside the embedding step of the k-center selector
    second = start(tmp_path, recipe, cache, out, delay=0.1)
    kill_when(second, lambda: len(embedding_shards(cache)) >= 1)
    check_no_torn_files(cache)
    rescored = logged(tmp_path, "score", second.pid)
    assert len(rescored) == len(set(rescored)) == n - cached.n_unique()  # only the rows the first run lost
    assert not set(rescored) & set(cached)
    embedded = sum(pl.read_parquet(p).height for p in embedding_shards(cache))
    assert SHARD_TEXTS <= embedded < n

    # a temporary of a dead writer, as a SIGKILL during a write leaves: ignored, then swept
    emb_dir = embedding_shards(cache)[0].parent
    stale = emb_dir / f".{'0' * 32}.keys.parquet.{_host()}-{2 ** 22 + 12345}.abc.tmp"
    stale.write_bytes(b"PAR1 torn")
    (score_shards(cache)[0].parent / f".{'0' * 32}.parquet.{_host()}-{2 ** 22 + 12345}.abc.tmp").write_bytes(b"x")

    # 3. rerun to the end: nothing scored again, only the lost embeddings computed
    third = start(tmp_path, recipe, cache, out, delay=0)
    finish(third)
    manifest = json.loads((out / "manifest.json").read_text())
    assert step(manifest, "len")["cache"] == {"hits": n, "computed": 0}
    emb = step(manifest, "cover")["embeddings"]
    assert (emb["hits"], emb["computed"]) == (embedded, n - embedded)
    assert logged(tmp_path, "score", third.pid) == []
    assert len(logged(tmp_path, "embed", third.pid)) == n - embedded
    assert not stale.exists()

    # same outputs as a run that was never interrupted
    finish(clean)
    rows, selected = outputs(out)
    clean_rows, clean_selected = outputs(tmp_path / "clean-out")
    assert rows.equals(clean_rows)
    assert selected == clean_selected and len(selected) == 40


def test_two_runs_share_one_cache_at_once(tmp_path, project):
    n = 5_000  # 10 score batches, then 10 embedding calls in one shard, 0.2 s each
    recipe = project(n)
    cache = tmp_path / "cache"
    # The second starts once the first has cached a batch: it reads a cache the first keeps writing to,
    # and both compute (and write) the rows neither had cached when its step began.
    first = start(tmp_path, recipe, cache, tmp_path / "out1", delay=0.2)
    deadline = time.monotonic() + 90
    while not score_shards(cache):
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    second = start(tmp_path, recipe, cache, tmp_path / "out2", delay=0.2)
    for proc in (first, second):
        finish(proc)
    check_no_torn_files(cache)
    assert not list(cache.rglob("*.tmp"))
    written = sum(pl.read_parquet(p).height for p in score_shards(cache))
    assert written >= n  # 2n when both scored everything; duplicates are resolved on read
    a, b = outputs(tmp_path / "out1"), outputs(tmp_path / "out2")
    assert a[0].equals(b[0]) and a[1] == b[1]

    # a third run is served entirely from what the two wrote (duplicate shards included)
    third = start(tmp_path, recipe, cache, tmp_path / "out3", delay=0)
    finish(third)
    manifest = json.loads((tmp_path / "out3" / "manifest.json").read_text())
    assert step(manifest, "len")["cache"] == {"hits": n, "computed": 0}
    emb = step(manifest, "cover")["embeddings"]
    assert (emb["hits"], emb["computed"]) == (n, 0)
    assert logged(tmp_path, "score", third.pid) == [] and logged(tmp_path, "embed", third.pid) == []
    c = outputs(tmp_path / "out3")
    assert c[0].equals(a[0]) and c[1] == a[1]


def test_sweep_removes_only_dead_writers_temporaries(tmp_path):
    host, live, dead = _host(), os.getpid(), 2 ** 22 + 12345  # above any pid_max: never a live process
    names = {
        "live": f".a.parquet.{host}-{live}.x1.tmp",
        "dead": f".a.parquet.{host}-{dead}.x2.tmp",
        "other_host_new": f".a.parquet.elsewhere-{dead}.x3.tmp",
        "other_host_old": f".b.npy.elsewhere-{dead}.x4.tmp",
        "shard": "0123.parquet",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"x")
    old = time.time() - 2 * 24 * 3600
    os.utime(tmp_path / names["other_host_old"], (old, old))
    assert sweep_temporaries(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [names["live"], names["other_host_new"], names["shard"]])


def test_large_embedding_results_are_memory_mapped(tmp_path, monkeypatch):
    import dqf.store.embeddings as E
    from dqf.select import kcenter_greedy

    class Emb:
        name, batch_size = "toy", 3

        def setup(self):
            pass

        def cache_key(self):
            return "k"

        def embed(self, texts):
            return np.stack([np.full(4, float(len(t)), dtype=np.float32) + np.arange(4) for t in texts])

    texts = [f"t{'x' * (i % 11)}{i}" for i in range(40)]
    store = E.EmbeddingStore(tmp_path)
    small = store.embed(Emb(), texts + texts[:3])  # a text at two positions is embedded once
    assert type(small) is np.ndarray and store.last_stats == {"hits": 0, "computed": 40}
    assert np.array_equal(small, Emb().embed(texts + texts[:3]))
    monkeypatch.setattr(E, "MEMMAP_MIN_BYTES", 0)
    mixed = ["new", *texts[::-1], "new", "newer"]
    big = store.embed(Emb(), mixed)
    assert isinstance(big, np.memmap) and store.last_stats == {"hits": 40, "computed": 2}
    assert np.array_equal(big, Emb().embed(mixed))
    assert kcenter_greedy(big, 5, first=1) == kcenter_greedy(np.array(big), 5, first=1)
    # a shard whose keys file is missing (killed between the two renames) is invisible
    for keys in tmp_path.rglob("*.keys.parquet"):
        keys.unlink()
    fresh = E.EmbeddingStore(tmp_path)
    assert np.array_equal(fresh.embed(Emb(), texts[:5]), small[:5])
    assert fresh.last_stats == {"hits": 0, "computed": 5}
