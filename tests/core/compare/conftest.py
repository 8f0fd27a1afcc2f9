"""Fixture of the `dqf compare` tests: one `dqf compare` run with a tiny encoder, shared by the CLI and report tests."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # compare_helpers

from compare_helpers import embedder_arg, pool_rows, random_recipe, top_recipe, write, write_pool  # noqa: E402


def _build(root, tiny_models_dir):
    import dqf
    import tiny_models as tm
    from dqf.cli import main

    bert = tm.tiny_bert(tiny_models_dir / "bert")
    rows = pool_rows()
    write_pool(root / "pool.jsonl", rows)
    cache = root / "cache"
    dqf.run(write(root / "top.toml", top_recipe("pool.jsonl")), cache_dir=cache)
    write(root / "rand.toml", random_recipe("pool.jsonl"))
    # Membership label: the rows with at least 4 filler words, i.e. the 9+ word outputs.
    write(root / "long.json", json.dumps([r for i, r in enumerate(rows) if i % 7 >= 4]))
    main(["compare", str(root / "top-run"), str(root / "rand.toml"), "--out", str(root / "cmp"),
          "--embedder", embedder_arg(bert), "--tokenizer", str(bert), "--labels", str(root / "long.json"),
          "--cache-dir", str(cache)])


@pytest.fixture(scope="session")
def compared(tmp_path_factory, worker_id):
    """`dqf compare` of a run directory (heuristic + top-k) and a recipe (random), with a membership label file.

    Built once per test session: under xdist the first worker to need it builds it in the session's
    shared temporary folder while the other waits, instead of both loading models on 2 cores.
    """
    from filelock import FileLock

    if worker_id == "master":
        root = tmp_path_factory.mktemp("compare_e2e")
        _build(root, root)
    else:
        root = tmp_path_factory.getbasetemp().parent / "compare_e2e"
        with FileLock(str(root) + ".lock"):
            if not (root / "cmp" / "report.html").is_file():
                root.mkdir(exist_ok=True)
                _build(root, root)
    rows = pool_rows()
    return {"root": root, "out": root / "cmp", "data": json.loads((root / "cmp" / "compare.json").read_text()),
            "rows": rows, "labelled": [r for i, r in enumerate(rows) if i % 7 >= 4]}
