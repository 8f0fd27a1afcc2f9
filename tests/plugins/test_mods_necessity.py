"""`mods-necessity`: fine-tuning lowers seed loss, batched = serial generation, reruns neither train nor generate."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

import dqf
import dqf.registry
import dqf.lm
from dqf import DqfError, RecipeError
from dqf.lm import finetune as ft
from dqf.lm import generate as gen

POOL = Path(__file__).resolve().parents[2] / "examples" / "data" / "alpaca_2k.jsonl"
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def pool_rows(n: int, start: int = 0) -> list[dict]:
    lines = POOL.read_text(encoding="utf-8").splitlines()[start:start + n]
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def llama(tiny_models):
    return str(tiny_models["llama"])


def load(path: str, **kw):
    ref = dqf.lm.resolve_model(path)
    tok = dqf.lm.load_tokenizer(ref)
    gen.prepare_tokenizer(tok)
    return dqf.lm.load_model(ref, "AutoModelForCausalLM", **kw), tok


def examples(tok, rows, template="alpaca", max_length=128):
    out = [ft.training_example(gen.prompt_ids(tok, r["instruction"], r["input"], template),
                           gen.response_ids(tok, r["instruction"], r["input"], r["output"], template, tok.eos_token_id),
                           max_length) for r in rows]
    assert all(e is not None for e in out)
    return out


# -- recipes ----------------------------------------------------------------------------------------------

JUDGE = '''
from pathlib import Path

import dqf

LOG = Path(__file__).with_name("judge_calls.txt")


class AnswerChars(dqf.Scorer):
    """Characters in the output (here: the generated answer); logs every id it scores."""

    name = "answer-chars"

    def columns(self):
        import polars as pl
        return {"answer_chars": pl.Int64}

    def score(self, batch):
        import polars as pl
        with LOG.open("a") as fh:
            fh.writelines(i + "\\n" for i in batch["id"])
        return batch.select(pl.col("output").str.len_chars().cast(pl.Int64).alias("answer_chars"))


class AnswerEcho(dqf.Scorer):
    """A judge whose only column is text, which cannot be a necessity score."""

    name = "answer-echo"

    def columns(self):
        import polars as pl
        return {"echo": pl.String}

    def score(self, batch):
        return batch.select("output").rename({"output": "echo"})


@dqf.hookimpl
def dqf_register_scorers(register):
    register(AnswerChars)
    register(AnswerEcho)
'''

RECIPE = """
name = "mods"
seed = 3
plugins = ["judge.py"]

[input]
path = "pool.jsonl"

[output]
dir = "out"
select = ["seed", "augment"]

[[steps]]
id = "quality"
score = {{ plugin = "heuristic" }}
where = "heuristic_ok"

[[steps]]
id = "seed"
select = {{ plugin = "top-k", column = "output_words", k = {seed_k} }}

[[steps]]
id = "necessity"
from = "quality"
probe = {{ plugin = "mods-necessity", base_model = "{model}", {probe} }}
where = "necessity < {threshold}"

[[steps]]
id = "augment"
select = {{ plugin = "top-k", column = "necessity", k = 3, descending = false }}
"""

PROBE = ('train_on = "seed", judge = { plugin = "answer-chars" }, max_new_tokens = 8, num_beams = 2, epochs = 1, '
         'learning_rate = 1e-2, warmup_ratio = 0.0, max_length = 128, batch_size = 4')


@pytest.fixture
def mods(tmp_path, write_jsonl, write_recipe, llama):
    (tmp_path / "judge.py").write_text(JUDGE, encoding="utf-8")
    write_jsonl(pool_rows(14))

    def recipe(probe=PROBE, threshold=60, name="recipe.toml", seed_k=4):
        return write_recipe(RECIPE.format(model=llama, probe=probe, threshold=threshold, seed_k=seed_k), name=name)

    return recipe


def step(manifest, sid):
    return next(s for s in manifest["steps"] if s["id"] == sid)


def judge_calls(tmp_path) -> list[str]:
    path = tmp_path / "judge_calls.txt"
    return path.read_text().splitlines() if path.exists() else []


def artifacts(cache: Path, prefix: str) -> list[Path]:
    root = cache / "artifacts" / "mods-necessity"
    return sorted(p for p in root.glob(f"{prefix}-*") if p.is_dir()) if root.exists() else []


def test_recipe_end_to_end_then_rerun_trains_and_generates_nothing(tmp_path, mods, llama, isolated_cache):
    recipe = mods()
    first = dqf.run(recipe, run_dir=tmp_path / "a")
    rows = first.rows
    n = rows.height
    probed = rows.filter(pl.col("step_necessity").is_not_null())
    assert probed.height == n == 14  # every row passed the quality filter and reached the probe
    assert probed["generated"].null_count() == 0 and probed["necessity"].null_count() == 0
    assert (probed["generated"].str.len_chars() > 0).all()
    assert probed["necessity"].to_list() == [float(len(t)) for t in probed["generated"]]

    s = step(first.manifest, "necessity")
    st = s["stats"]
    assert st["finetune"] == "trained" and st["train_steps"] == 1 and st["train_rows"] == 4
    assert st["train_tokens"] > 0 and st["train_tokens_per_s"] > 0
    assert st["generated_rows"] == n and st["generation_cached_rows"] == 0 and st["generation_rows_per_s"] > 0
    low = probed.filter(pl.col("necessity") < 60)
    assert s["rows_out"] == low.height and 0 < low.height < n  # the threshold splits the pool
    assert len(judge_calls(tmp_path)) == n

    # The output is the seed set plus the 3 most necessary rows (lowest judge score below the threshold).
    seed_ids = set(rows.filter(pl.col("step_seed") == "kept")["id"])
    aug_ids = set(rows.filter(pl.col("step_augment") == "kept")["id"])
    assert len(seed_ids) == 4 and len(aug_ids) == min(3, low.height)
    assert set(first.selected["id"]) == seed_ids | aug_ids
    assert aug_ids <= set(low["id"])

    # The adapter really trained: saved, non-zero LoRA B, and generation from base + adapter gives the same answers.
    (adapter,) = artifacts(isolated_cache, "model")
    meta = json.loads((adapter / "train.json").read_text())
    assert meta["steps"] == 1 and meta["train_rows"] == 4
    from safetensors.torch import load_file

    weights = load_file(adapter / "adapter_model.safetensors")
    assert any("lora_B" in k and float(v.abs().sum()) > 0 for k, v in weights.items())
    base, tok = load(llama)
    tuned = ft.load_adapter(base, adapter)
    prompts = [gen.prompt_ids(tok, r["instruction"], r["input"], "alpaca")
               for r in first.selected.iter_rows(named=True)]
    again = gen.generate_answers(tuned, tok, prompts, max_new_tokens=8, num_beams=2, batch_size=4)
    by_id = dict(zip(rows["id"], rows["generated"]))
    assert again == [by_id[i] for i in first.selected["id"]]

    # Rerun: the model is neither trained nor even loaded, nothing is generated, the judge scores from cache.
    second = dqf.run(recipe, run_dir=tmp_path / "b")
    st2 = step(second.manifest, "necessity")["stats"]
    assert st2["finetune"] == "not needed" and st2["train_steps"] == 0
    assert st2["generated_rows"] == 0 and st2["generation_cached_rows"] == n
    assert len(judge_calls(tmp_path)) == n
    assert second.rows.equals(first.rows)

    # New generation options reuse the trained adapter: generation only.
    third = dqf.run(mods(probe=PROBE.replace("max_new_tokens = 8", "max_new_tokens = 5"), name="r3.toml"),
                    run_dir=tmp_path / "c")
    st3 = step(third.manifest, "necessity")["stats"]
    assert st3["finetune"] == "cached" and st3["train_steps"] == 0 and st3["generated_rows"] == n
    assert len(artifacts(isolated_cache, "model")) == 1 and len(artifacts(isolated_cache, "gen")) == 2
    # A different seed set (k=5) means a different fine-tune.
    fourth = dqf.run(mods(seed_k=5, name="r4.toml"), run_dir=tmp_path / "d")
    st4 = step(fourth.manifest, "necessity")["stats"]
    assert st4["finetune"] == "trained" and st4["train_rows"] == 5
    assert len(artifacts(isolated_cache, "model")) == 2


def test_finetune_false_probes_the_base_model(tmp_path, mods, llama, isolated_cache):
    probe = 'finetune = false, judge = { plugin = "answer-chars" }, max_new_tokens = 6, num_beams = 1'
    res = dqf.run(mods(probe=probe), run_dir=tmp_path / "a")
    st = step(res.manifest, "necessity")["stats"]
    assert st["finetune"] == "off" and st["train_steps"] == 0 and st["generated_rows"] == res.rows.height
    assert artifacts(isolated_cache, "model") == []
    assert res.manifest["plugins"][2]["identity"]["base_model"] == dqf.lm.resolve_model(llama).identity
    base, tok = load(llama)
    selected = res.selected
    prompts = [gen.prompt_ids(tok, r["instruction"], r["input"], "alpaca") for r in selected.iter_rows(named=True)]
    direct = gen.generate_answers(base, tok, prompts, max_new_tokens=6, batch_size=8)
    by_id = dict(zip(res.rows["id"], res.rows["generated"]))
    assert direct == [by_id[i] for i in selected["id"]]


def test_an_adapter_trained_elsewhere_is_probed_as_dqf_would_its_own(tmp_path, mods, llama, isolated_cache):
    """Bring your own LoRA: `finetune = false` + `adapter` gives the answers dqf's own identical adapter gives."""
    import shutil

    own = dqf.run(mods(), run_dir=tmp_path / "own")
    (trained,) = artifacts(isolated_cache, "model")
    mine = tmp_path / "my-lora"  # as another trainer would leave it: a peft folder, somewhere else
    shutil.copytree(trained, mine, ignore=shutil.ignore_patterns("train.json", ".dqf*"))
    probe = PROBE.replace('train_on = "seed", ', 'finetune = false, adapter = "my-lora", ')
    res = dqf.run(mods(probe=probe, name="byo.toml"), run_dir=tmp_path / "byo")
    st = step(res.manifest, "necessity")["stats"]
    assert st["finetune"] == "off" and st["generated_rows"] == res.rows.height
    assert res.rows.select("id", "generated").equals(own.rows.select("id", "generated"))
    assert res.manifest["plugins"][2]["identity"]["adapter"] == dqf.lm.files_identity(mine)
    with pytest.raises(dqf.RecipeError, match=r"adapter: 'nowhere' is not a LoRA adapter folder"):
        dqf.validate(mods(probe=probe.replace("my-lora", "nowhere"), name="bad.toml"))
    with pytest.raises(dqf.RecipeError, match=r"`adapter` is a model trained elsewhere: set `finetune = false`"):
        dqf.validate(mods(probe=PROBE + ', adapter = "my-lora"', name="bad2.toml"))


def test_limit_probes_a_seeded_subset_with_heuristic_judge_and_full_finetune(tmp_path, mods, isolated_cache):
    probe = ('train_on = "seed", method = "full", max_train_steps = 2, learning_rate = 1e-3, max_length = 96, '
             'limit = 5, judge = { plugin = "heuristic" }, judge_column = "output_chars", '
             'max_new_tokens = 4, num_beams = 1')
    res = dqf.run(mods(probe=probe, threshold=10_000), run_dir=tmp_path / "a")
    probed = res.rows.filter(pl.col("generated").is_not_null())
    assert probed.height == 5
    assert res.rows["necessity"].null_count() == res.rows.height - 5
    assert probed["necessity"].to_list() == [float(len(t)) for t in probed["generated"]]
    s = step(res.manifest, "necessity")
    assert s["rows_out"] == 5  # null necessity fails the where
    assert s["stats"]["rows_probed"] == 5 and s["stats"]["rows_skipped_by_limit"] == res.rows.height - 5
    assert s["stats"]["finetune"] == "trained" and s["stats"]["train_steps"] == 2
    (model_dir,) = artifacts(isolated_cache, "model")
    assert (model_dir / "config.json").exists() and (model_dir / "model.safetensors").exists()
    again = dqf.run(mods(probe=probe, threshold=10_000), run_dir=tmp_path / "b")
    assert set(again.rows.filter(pl.col("generated").is_not_null())["id"]) == set(probed["id"])
    assert step(again.manifest, "necessity")["stats"]["generated_rows"] == 0


def test_judge_with_several_columns_needs_judge_column_and_fails_before_training(tmp_path, mods, isolated_cache):
    probe = 'train_on = "seed", judge = { plugin = "heuristic" }, max_new_tokens = 4'
    with pytest.raises(dqf.RecipeError, match=r"steps\[2\]\.probe: .*several columns.*set judge_column"):
        dqf.validate(mods(probe=probe, name="r0.toml"))  # caught by `dqf validate`, before any data is read
    with pytest.raises(DqfError, match="several columns.*set judge_column"):
        dqf.run(mods(probe=probe), run_dir=tmp_path / "a")
    assert artifacts(isolated_cache, "model") == [] and artifacts(isolated_cache, "gen") == []
    with pytest.raises(DqfError, match="judge_column 'nope' is not a column"):
        dqf.run(mods(probe=probe + ', judge_column = "nope"', name="r2.toml"), run_dir=tmp_path / "b")
    with pytest.raises(DqfError, match="judge 'answer-echo' column 'echo' is String, not a number"):
        dqf.run(mods(probe='train_on = "seed", judge = { plugin = "answer-echo" }', name="r3.toml"),
                run_dir=tmp_path / "c")
    assert artifacts(isolated_cache, "model") == [] and artifacts(isolated_cache, "gen") == []


@pytest.mark.parametrize("probe,expected", [
    ('train_on = "seed", judge = { plugin = "nope" }',
     "steps[2].probe.judge.plugin: unknown scorer 'nope'"),
    ('train_on = "seed", judge = { plugin = "top-k", column = "x", k = 1 }',
     "steps[2].probe.judge.plugin: 'top-k' is a selector, not a scorer"),
    ('train_on = "seed", judge = { plugin = "answer-chars", bogus = 1 }',
     "steps[2].probe.judge.bogus: unknown key"),
    ('train_on = "seed", judge = { plugin = "answer-chars" }, epoch = 2',
     "steps[2].probe.epoch: unknown key"),
    ('train_on = "seed", judge = { plugin = "answer-chars" }, method = "qlora"',
     "steps[2].probe.method: Input should be 'lora' or 'full'"),
    ('train_on = "seed", judge = { plugin = "answer-chars" }, num_beams = 0',
     "steps[2].probe.num_beams: Input should be greater than 0"),
    ('judge = { plugin = "answer-chars" }',
     "steps[2].probe: `train_on` (the id of the seed-set step) is required when `finetune` is true"),
    ('train_on = "nope", judge = { plugin = "answer-chars" }',
     "steps[2].probe: refers to step 'nope', which does not exist"),
])
def test_option_errors_name_the_key_path(mods, probe, expected):
    path = mods(probe=probe)
    with pytest.raises(RecipeError) as info:
        dqf.load_recipe(path)
    assert any(line.startswith(f"{path}: {expected}") for line in info.value.lines), info.value.lines


def test_uninstalled_base_model_package_is_a_recipe_error(mods, llama):
    path = mods(probe='train_on = "seed", judge = { plugin = "answer-chars" }')
    path.write_text(path.read_text().replace(llama, "pkg:no-such-model-pkg"), encoding="utf-8")
    with pytest.raises(RecipeError, match=r"steps\[2\]\.probe: model 'pkg:no-such-model-pkg'.*not installed"):
        dqf.load_recipe(path)


def test_default_judge_is_the_reward_model_and_probe_is_registered(llama):
    info = dqf.registry.build_plugin_manager().get("probe", "mods-necessity")
    assert info.provider.distribution == "dqf"
    opts = info.cls.Options(base_model=llama, train_on="seed")
    assert opts.judge.plugin == "reward-model" and info.cls.nested_plugins == {"judge": "scorer", "backend": "backend"}
    assert opts.backend.plugin == "transformers"
    reference = (3, 2e-5, "cosine", 0.03, 4)  # MoDS train/run.sh and inference defaults
    assert (opts.epochs, opts.learning_rate, opts.lr_scheduler, opts.warmup_ratio, opts.num_beams) == reference
    probe = info.cls(opts)
    assert probe.depends_on() == ["seed"]
    assert info.cls(info.cls.Options(base_model=llama, finetune=False)).depends_on() == []
    undocumented = [k for k, f in info.cls.Options.model_fields.items() if not f.description]
    assert undocumented == []
