"""The Ray engine on a local cluster: same rows.parquet and selection as the local engine, a shared cache, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import polars as pl
import pytest

import dqf
from dqf import DqfError, RecipeError
from dqf.engine import run_recipe
from words_plugin import PATH as WORDS_PLUGIN

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray's own DataContext warns on creation


REPO = Path(__file__).resolve().parents[3]
EXAMPLE_POOL = REPO / "examples" / "data" / "alpaca_2k.jsonl"

# Keep each pytest worker's cluster light: no dashboard, no usage report, a small object store.
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0", "RAY_AUTH_MODE": "disabled"}

RECIPE = """
name = "ray-parity"
plugins = ["{words}"]
seed = 1

[input]
path = "{pool}"

[output]
dir = "out"

[engine]
concurrency = 2
[engine.plugins.reward-model]
concurrency = 3
num_cpus = 1
[engine.plugins.hf-encoder]
concurrency = 1
[engine.steps.reward]
concurrency = 1

[[steps]]
id = "quality"
score = {{ plugin = "words" }}
where = "words_ok and output_words >= 20"

[[steps]]
id = "reward"
score = {{ plugin = "reward-model", model = "{rm}", batch_size = 8, max_length = 64 }}
batch_size = 32

[[steps]]
id = "top"
select = {{ plugin = "top-k", column = "reward", k = 60 }}

[[steps]]
id = "diverse"
select = {{ plugin = "kcenter", k = 15, embedder = {{ plugin = "hf-encoder", model = "{bert}", pooling = "mean", max_length = 48 }} }}
"""


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    saved = {k: os.environ.get(k) for k in RAY_ENV}
    os.environ.update(RAY_ENV)
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20, logging_level="WARNING",
             log_to_driver=False)
    yield ray
    ray.shutdown()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def recipe_path(tmp_path_factory):
    import tiny_models as tm

    root = tmp_path_factory.mktemp("ray_recipe")
    lines = EXAMPLE_POOL.read_text(encoding="utf-8").splitlines()[:160]
    (root / "pool.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    rows = [json.loads(line) for line in lines[:40]]
    rm = tm.tiny_reward_model(root / "rm", [(r["instruction"], r["output"]) for r in rows])
    bert = tm.tiny_bert(root / "bert")
    path = root / "recipe.toml"
    path.write_text(RECIPE.format(pool=root / "pool.jsonl", rm=rm, bert=bert, words=WORDS_PLUGIN), encoding="utf-8")
    return path


def _run(recipe_path, tmp_path, name, cache, engine):
    import torch

    recipe, host = dqf.load_recipe(recipe_path, overrides={"engine": {"kind": engine}})
    # Ray runs a 1-CPU actor with one torch thread; the local run must sum in the same order to match bit for bit.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = run_recipe(recipe, host, run_dir=tmp_path / name, cache_dir=cache)
    finally:
        torch.set_num_threads(threads)
    return recipe, result


def _rows(run_dir: Path) -> pl.DataFrame:
    return pl.read_parquet(run_dir / "rows.parquet").sort("id")


def _selected(run_dir: Path) -> list[str]:
    return sorted(line for line in (run_dir / "selected.jsonl").read_text(encoding="utf-8").splitlines())


def _embedding_files(cache: Path) -> set[str]:
    return {str(p.relative_to(cache)) for p in (cache / "embeddings").rglob("*") if p.is_file()}


def test_ray_matches_local_and_shares_the_cache(ray_cluster, recipe_path, tmp_path):
    _, local = _run(recipe_path, tmp_path, "local", tmp_path / "cache_local", "local")
    shared = tmp_path / "cache_ray"
    recipe, ray_run = _run(recipe_path, tmp_path, "ray", shared, "ray")

    # Same rows, scores, statuses and reasons; same selection (order aside).
    rows_local, rows_ray = _rows(local.run_dir), _rows(ray_run.run_dir)
    assert rows_ray.height == 160 and rows_ray["selected"].sum() == 15
    assert rows_ray.drop("source").equals(rows_local.drop("source"))
    assert _selected(ray_run.run_dir) == _selected(local.run_dir)

    # Work ran on the cluster: models never loaded on the driver; actors for models, tasks for the word counts.
    steps = {s.id: s.plugin for s in recipe.steps}
    assert steps["reward"].model is None
    assert steps["diverse"].nested["embedder"].model is None
    engine = ray_run.manifest["engine"]
    assert engine["kind"] == "ray" and engine["read"] == {"on": "driver"}  # one input file: nothing to split
    # [engine] defaults < [engine.plugins.<name>] < [engine.steps.<id>]
    maps = {(m["step"], m["plugin"]): m for m in engine["maps"]}
    assert maps["quality", "words"] == {"step": "quality", "plugin": "words", "compute": "tasks",
                                            "concurrency": 1, "rows": 160}
    assert maps["reward", "reward-model"] == {"step": "reward", "plugin": "reward-model", "compute": "actors",
                                              "concurrency": 1, "num_cpus": 1.0, "rows": 83}
    assert maps["diverse", "hf-encoder"]["compute"] == "actors" and maps["diverse", "hf-encoder"]["concurrency"] == 1
    assert local.manifest["engine"] == {"kind": "local"}

    # A local run on the Ray run's cache recomputes nothing: no score computed, no vector added, no model loaded.
    before = _embedding_files(shared)
    assert before
    recipe2, again = _run(recipe_path, tmp_path, "again", shared, "local")
    for step in again.manifest["steps"]:
        if "cache" in step:
            assert step["cache"]["computed"] == 0 and step["cache"]["hits"] == step["rows_in"], step
    assert _embedding_files(shared) == before
    steps2 = {s.id: s.plugin for s in recipe2.steps}
    assert "max_length" not in steps2["reward"].stats()  # set when a model loads (and kept after it is freed)
    assert steps2["diverse"].nested["embedder"].model is None
    assert _rows(again.run_dir).drop("source").equals(rows_local.drop("source"))

    # And a Ray run on a warm cache sends nothing to the cluster.
    _, warm = _run(recipe_path, tmp_path, "warm", shared, "ray")
    assert warm.manifest["engine"]["maps"] == []
    assert _rows(warm.run_dir).drop("source").equals(rows_local.drop("source"))


def test_worker_error_is_one_line(ray_cluster, recipe_path, tmp_path):
    # A model folder that is not a sequence classifier: the reward model refuses it in the actor's setup().
    import tiny_models as tm

    bert = tm.tiny_bert(tmp_path / "not_a_reward_model")
    text = recipe_path.read_text(encoding="utf-8")
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace(str(recipe_path.parent / "rm"), str(bert)), encoding="utf-8")
    recipe, host = dqf.load_recipe(bad, overrides={"engine": {"kind": "ray"}})
    with pytest.raises(DqfError) as err:
        run_recipe(recipe, host, run_dir=tmp_path / "out", cache_dir=tmp_path / "cache")
    assert len(err.value.lines) == 1
    assert err.value.lines[0].startswith("reward (reward-model): reward-model: model ")
    assert "not a sequence classifier" in err.value.lines[0]


def test_engine_section_is_validated(recipe_path, tmp_path):
    text = recipe_path.read_text(encoding="utf-8")
    cases = {
        "[engine]\nconcurrency = 2\n": ("[engine]\nconcurrency = 2\nworkers = 3\n", "engine.workers: unknown key"),
        "[engine.steps.reward]\n": ("[engine.steps.rewrd]\n", "engine.steps.rewrd: no step with id 'rewrd'"),
    }
    for old, (new, message) in cases.items():
        path = tmp_path / "r.toml"
        path.write_text(text.replace(old, new), encoding="utf-8")
        with pytest.raises(RecipeError) as err:
            dqf.load_recipe(path)
        assert any(line.endswith(message) or message in line for line in err.value.lines), err.value.lines
    path.write_text(text.replace("[engine.steps.reward]\nconcurrency = 1\n", "[engine.steps.reward]\nnum_gpus = -1\n"),
                    encoding="utf-8")
    with pytest.raises(RecipeError) as err:
        dqf.load_recipe(path)
    assert any("engine.steps.reward.num_gpus: Input should be greater than or equal to 0" in x for x in err.value.lines)
    path.write_text(text.replace("[engine.steps.reward]\n", "[engine.plugins.bert]\n"), encoding="utf-8")
    with pytest.raises(RecipeError) as err:
        dqf.load_recipe(path)
    assert err.value.lines == [f"{path}: engine.plugins.bert: no plugin of this recipe is named 'bert' "
                               f"(plugins: hf-encoder, kcenter, reward-model, top-k, words)"]


def test_missing_ray_says_how_to_install(recipe_path, tmp_path):
    script = textwrap.dedent(f"""
        import sys
        sys.modules["ray"] = None  # as if ray were not installed
        from dqf.cli import main
        main(["run", {str(recipe_path)!r}, "--engine", "ray", "--out", {str(tmp_path / "out")!r}])
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "DQF_CACHE_DIR": str(tmp_path / "cache")})
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "dqf: error: the Ray engine (--engine ray) needs the Python package 'ray[data]', which is not installed; "
        "install it with: pip install 'dqf[ray]'"]
    assert not (tmp_path / "out").exists()


SHARDED = """
name = "ray-shards"
plugins = ["{words}"]
seed = 1

[input]
path = "shards"
on_bad_row = "{mode}"

[output]
dir = "out"

[[steps]]
id = "quality"
score = {{ plugin = "words" }}
where = "output_words >= 5"

[[steps]]
id = "top"
select = {{ plugin = "top-k", column = "output_words", k = 20 }}
"""


def _sharded_recipe(root: Path, mode: str, bad_line: bool) -> Path:
    """Three shards (jsonl, json array, parquet) with rows repeated within and across them, and bad rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    lines = EXAMPLE_POOL.read_text(encoding="utf-8").splitlines()[:90]
    shards = root / "shards"
    shards.mkdir(parents=True)
    a = lines[:30] + lines[:3] + (['{"instruction": 7, "output": "x"}'] if bad_line else [])
    (shards / "a.jsonl").write_text("\n".join(a) + "\n", encoding="utf-8")
    (shards / "b.json").write_text("[\n" + ",\n".join(lines[25:60] + ['{"instruction": [1], "output": "y"}']) + "\n]\n", encoding="utf-8")
    pq.write_table(pa.Table.from_pylist([json.loads(x) for x in lines[55:90] + lines[:2]]), shards / "c.parquet")
    path = root / "recipe.toml"
    path.write_text(SHARDED.format(mode=mode, words=WORDS_PLUGIN), encoding="utf-8")
    return path


def test_shards_read_by_ray_tasks_count_as_one_sequential_read(ray_cluster, tmp_path):
    recipe_path = _sharded_recipe(tmp_path / "q", "quarantine", bad_line=True)
    _, local = _run(recipe_path, tmp_path, "local", tmp_path / "cache_local", "local")
    _, ray_run = _run(recipe_path, tmp_path, "ray", tmp_path / "cache_ray", "ray")
    assert ray_run.manifest["engine"]["read"] == {"files": 3, "tasks": 3}
    rows_local, rows_ray = _rows(local.run_dir), _rows(ray_run.run_dir)
    assert rows_ray.equals(rows_local)  # sources (file:line) included
    assert rows_ray.height == 90 and (rows_ray["copies"] > 1).sum() == 13
    inp_local, inp_ray = local.manifest["input"], ray_run.manifest["input"]
    assert inp_ray == {**inp_local, "read_seconds": inp_ray["read_seconds"]}
    counts = ray_run.manifest["counts"]
    assert counts == local.manifest["counts"]
    assert (counts["rows_read"], counts["quarantined"], counts["duplicates"]) == (107, 2, 15)
    quarantine = lambda run: (run.run_dir / "quarantine.jsonl").read_text(encoding="utf-8")  # noqa: E731
    assert quarantine(ray_run) == quarantine(local)
    assert _selected(ray_run.run_dir) == _selected(local.run_dir)


def test_a_bad_row_in_a_shard_read_on_ray_is_the_local_error(ray_cluster, tmp_path):
    recipe_path = _sharded_recipe(tmp_path / "e", "error", bad_line=True)
    errors = []
    for engine in ("local", "ray"):
        recipe, host = dqf.load_recipe(recipe_path, overrides={"engine": {"kind": engine}})
        with pytest.raises(dqf.DataError) as err:
            run_recipe(recipe, host, run_dir=tmp_path / engine, cache_dir=tmp_path / "cache")
        errors.append(err.value.lines)
    assert errors[0] == errors[1] and len(errors[0]) == 1
    assert "a.jsonl:34: " in errors[0][0] and "instruction" in errors[0][0]


PROBE = """
name = "ray-probe"
seed = 3
[input]
path = "{pool}"
[output]
dir = "out"
[engine]
concurrency = 2
[engine.steps.nec]
num_cpus = 1

[[steps]]
id = "seed"
select = {{ plugin = "random", k = 6 }}

[[steps]]
id = "nec"
from = "input"
[steps.probe]
plugin = "mods-necessity"
base_model = "{llama}"
train_on = "seed"
method = "lora"
lora_r = 4
epochs = 2
learning_rate = 5e-3
max_length = 64
max_new_tokens = 6
batch_size = 4
limit = 20
judge = {{ plugin = "reward-model", model = "{rm}", batch_size = 8, max_length = 64 }}
"""


def test_the_necessity_probe_on_ray_matches_local(ray_cluster, recipe_path, tmp_path):
    """Generation runs on an actor pool (each actor opening the backend on the adapter the driver trained and
    saved in the cache), the judge on another; the probe's columns equal the local engine's."""
    import tiny_models as tm

    root = recipe_path.parent
    path = tmp_path / "probe.toml"
    path.write_text(PROBE.format(pool=root / "pool.jsonl", llama=tm.tiny_llama(tmp_path / "llama"), rm=root / "rm"),
                    encoding="utf-8")
    _, local = _run(path, tmp_path, "local", tmp_path / "cache_local", "local")
    recipe, ray_run = _run(path, tmp_path, "ray", tmp_path / "cache_ray", "ray")
    cols = ["id", "generated", "necessity"]
    rows_local, rows_ray = _rows(local.run_dir), _rows(ray_run.run_dir)
    assert rows_ray.select(cols).equals(rows_local.select(cols))
    assert rows_ray["generated"].drop_nulls().len() == 20 and rows_ray["necessity"].drop_nulls().len() == 20
    st = ray_run.manifest["steps"][1]["stats"]
    assert st["finetune"] == "trained" and st["generated_rows"] == 20  # once, on the driver; answers on the cluster
    maps = {(m["step"], m["plugin"]): m for m in ray_run.manifest["engine"]["maps"]}
    assert maps["nec", "transformers"] == {"step": "nec", "plugin": "transformers", "compute": "actors",
                                           "concurrency": 1, "num_cpus": 1.0, "rows": 20}
    assert maps["nec", "reward-model"]["compute"] == "actors" and maps["nec", "reward-model"]["rows"] == 20
