"""The Store owns the cache layout; atomic_dir makes a folder appear whole or not at all."""

from __future__ import annotations

import pytest

import dqf
from dqf.store import MARKER, Store
from dqf.store.atomic import atomic_dir


class _Scorer(dqf.Scorer):
    name = "layout-test"


def test_store_lays_out_scores_embeddings_artifacts_and_models_under_its_root(tmp_path):
    store = Store(tmp_path)
    entry = store.scores(_Scorer())
    assert entry.dir.parent == tmp_path / "scores" / "layout-test"
    assert store.scores(_Scorer(), upstream="x").dir != entry.dir  # upstream producers are part of the key
    assert store.embeddings.root == tmp_path / "embeddings"
    assert store.artifact_dir("mods-necessity", "k1") == tmp_path / "artifacts" / "mods-necessity" / "k1"
    assert store.models_dir == tmp_path / "models"
    for part in Store.PARTS:
        (tmp_path / part / "f").mkdir(parents=True)
        (tmp_path / part / "f" / "x").write_bytes(b"1234")
    (tmp_path / "mine").mkdir()
    marker = sum(len((tmp_path / part / MARKER).read_bytes()) for part in Store.PARTS)
    assert store.clear() == (16 + marker, []) and sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_cache_clear_deletes_only_folders_dqf_made(tmp_path):
    import subprocess
    import sys

    for part in ("models", "artifacts"):  # a user's own project folders, in the folder given as --cache-dir
        (tmp_path / part).mkdir()
        (tmp_path / part / "weights.bin").write_bytes(b"precious")
    store = Store(tmp_path)
    store.scores(_Scorer()).dir.mkdir(parents=True)  # a folder dqf made: marked
    (store.embeddings.root / "e").mkdir(parents=True)
    proc = subprocess.run([sys.executable, "-c", "from dqf.cli import main; main()", "cache", "clear", "--cache-dir",
                           str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifacts", "models"]
    assert (tmp_path / "models" / "weights.bin").read_bytes() == b"precious"
    assert proc.stderr.splitlines() == [
        f"left {tmp_path / part}: no {MARKER} file in it, so dqf did not make it (delete it yourself if it is dqf's)"
        for part in ("artifacts", "models")]


def test_atomic_dir_appears_whole_and_keeps_a_finished_copy(tmp_path):
    target = tmp_path / "model"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "a").write_text("1")
            raise RuntimeError("killed half way")
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("first")
    with atomic_dir(target) as tmp:  # another writer finished first: its folder stays
        (tmp / "a").write_text("second")
    assert (target / "a").read_text() == "first" and [p.name for p in tmp_path.iterdir()] == ["model"]
    with atomic_dir(target, replace=True) as tmp:
        (tmp / "b").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["b"]
