"""The Store owns the cache layout; atomic_dir makes a folder appear whole or not at all."""

from __future__ import annotations

import pytest

import dqf
from dqf.store import Store
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
    assert store.clear() == 16 and sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


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
