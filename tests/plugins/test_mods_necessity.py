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


# -- prompts and training examples -----------------------------------------------------------------------

def test_alpaca_prompt_and_labels_cover_only_the_response(llama):
    _, tok = load(llama)
    assert gen.prompt_text(tok, "Add 2 and 3.", "", "alpaca").startswith(
        "Below is an instruction that describes a task. Write a response")
    with_input = gen.prompt_text(tok, "Add the numbers.", "2 and 3", "alpaca")
    assert "paired with an input" in with_input and with_input.endswith("### Input:\n2 and 3\n\n### Response:")
    prompt = gen.prompt_ids(tok, "Add the numbers.", "2 and 3", "alpaca")
    response = gen.response_ids(tok, "Add the numbers.", "2 and 3", "The sum is 5.", "alpaca", tok.eos_token_id)
    assert response[-1] == tok.eos_token_id
    ex = ft.training_example(prompt, response, max_length=512)
    assert ex.input_ids == prompt + response
    assert ex.labels == [ft.IGNORE_INDEX] * len(prompt) + response
    cut = ft.training_example(prompt, response, max_length=len(prompt) + 2)
    assert cut.labels[len(prompt):] == response[:2]
    assert ft.training_example(prompt, response, max_length=len(prompt)) is None  # no response token left


def test_chat_template_response_ends_with_the_templates_end_marker(llama):
    _, tok = load(llama)
    text = gen.prompt_text(tok, "say hi", "", "chat")
    assert text == "<s> user : say hi </s> <s> assistant : "
    response = gen.response_ids(tok, "say hi", "", "the answer", "chat", tok.eos_token_id)
    assert tok.convert_ids_to_tokens(response) == ["the", "answer", "</s>"]


# -- fine-tuning ------------------------------------------------------------------------------------------

def test_lora_finetune_lowers_seed_loss_and_saved_adapter_reproduces_it(llama, tmp_path):
    model, tok = load(llama)
    ex = examples(tok, pool_rows(8))
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    before = ft.response_loss(model, ex, tok.pad_token_id)
    cfg = ft.TrainConfig(method="lora", learning_rate=3e-2, epochs=4, batch_size=4, warmup_ratio=0.0,
                         lora_target_modules=TARGETS, seed=1)
    peft_model = ft.add_lora(model, cfg)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert 0 < trainable < sum(p.numel() for p in peft_model.parameters()) / 4
    result = ft.train_causal_lm(peft_model, ex, cfg, pad_id=tok.pad_token_id)
    after = ft.response_loss(peft_model, ex, tok.pad_token_id)
    assert result.steps == 8 and result.tokens > 0 and len(result.epoch_losses) == 4
    assert after < before - 0.05, (before, after)
    # Only the adapters moved: the base weights under them are untouched.
    base_now = peft_model.get_base_model().state_dict()
    assert all(bool((base_now[k] == v).all()) for k, v in base_state.items() if k in base_now)

    ft.save_trained(peft_model, tmp_path / "adapter", {"steps": result.steps})
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    assert json.loads((tmp_path / "adapter" / "train.json").read_text())["steps"] == 8
    fresh, _ = load(llama)
    reloaded = ft.load_adapter(fresh, tmp_path / "adapter")
    assert ft.response_loss(reloaded, ex, tok.pad_token_id) == pytest.approx(after, abs=1e-4)


def test_full_finetune_lowers_seed_loss_and_saved_weights_reproduce_it(llama, tmp_path):
    model, tok = load(llama)
    ex = examples(tok, pool_rows(8))
    before = ft.response_loss(model, ex, tok.pad_token_id)
    cfg = ft.TrainConfig(method="full", learning_rate=1e-2, epochs=2, batch_size=2, gradient_accumulation_steps=2,
                         warmup_ratio=0.1, seed=0)
    result = ft.train_causal_lm(model, ex, cfg, pad_id=tok.pad_token_id)
    after = ft.response_loss(model, ex, tok.pad_token_id)
    assert result.steps == 4  # 4 micro-batches per epoch, 2 per optimizer step, 2 epochs
    assert after < before - 0.5, (before, after)
    ft.save_trained(model, tmp_path / "full", {})
    reloaded = dqf.lm.load_model(dqf.lm.resolve_model(str(tmp_path / "full")), "AutoModelForCausalLM")
    assert ft.response_loss(reloaded, ex, tok.pad_token_id) == pytest.approx(after, abs=1e-4)


def test_max_train_steps_caps_training(llama):
    model, tok = load(llama)
    cfg = ft.TrainConfig(method="full", epochs=5, batch_size=2, max_steps=3)
    assert ft.train_causal_lm(model, examples(tok, pool_rows(8)), cfg, pad_id=tok.pad_token_id).steps == 3


def test_unknown_lora_target_names_the_models_linear_layers(llama):
    model, _ = load(llama)
    with pytest.raises(DqfError, match="lora_target_modules.*q_proj"):
        ft.add_lora(model, ft.TrainConfig(lora_target_modules=("c_attn",)))


# -- generation -------------------------------------------------------------------------------------------

def scrambled(model):
    """The tiny model with its projections re-drawn large: its random init echoes ':' whatever the prompt."""
    import torch

    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("proj.weight"):
                p.normal_(0, 0.3)
    return model


@pytest.mark.parametrize("num_beams", [1, 2])
def test_batched_left_padded_generation_equals_one_prompt_at_a_time(llama, num_beams):
    model, tok = load(llama)
    scrambled(model)
    rows = pool_rows(10)
    prompts = [gen.prompt_ids(tok, r["instruction"], r["input"], "alpaca") for r in rows]
    assert len({len(p) for p in prompts}) >= 5  # real padding happens inside each batch
    batched = gen.generate_answers(model, tok, prompts, max_new_tokens=8, num_beams=num_beams, batch_size=4)
    single = [gen.generate_answers(model, tok, [p], max_new_tokens=8, num_beams=num_beams, batch_size=1)[0] for p in prompts]
    assert batched == single
    assert all(t for t in batched) and len(set(batched)) >= 8  # answers depend on the prompt


def test_generate_reports_each_batch_in_length_order(llama):
    model, tok = load(llama)
    prompts = [gen.prompt_ids(tok, r["instruction"], r["input"], "alpaca") for r in pool_rows(5)]
    seen = []
    out = gen.generate_answers(model, tok, prompts, max_new_tokens=3, batch_size=2, on_batch=lambda pos, t: seen.append(pos))
    assert sorted(p for batch in seen for p in batch) == list(range(5))
    lengths = [len(prompts[p]) for batch in seen for p in batch]
    assert lengths == sorted(lengths, reverse=True)
    assert len(out) == 5 and all(isinstance(t, str) for t in out)


def test_truncate_left_keeps_the_response_marker():
    assert gen.truncate_left([1, 2, 3, 4], 2) == ([3, 4], True)
    assert gen.truncate_left([1, 2], 5) == ([1, 2], False)
    assert gen.truncate_left([1, 2], None) == ([1, 2], False)


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
    assert opts.judge.plugin == "reward-model" and info.cls.nested_plugins == {"judge": "scorer"}
    reference = (3, 2e-5, "cosine", 0.03, 4)  # MoDS train/run.sh and inference defaults
    assert (opts.epochs, opts.learning_rate, opts.lr_scheduler, opts.warmup_ratio, opts.num_beams) == reference
    probe = info.cls(opts)
    assert probe.depends_on() == ["seed"]
    assert info.cls(info.cls.Options(base_model=llama, finetune=False)).depends_on() == []
    undocumented = [k for k, f in info.cls.Options.model_fields.items() if not f.description]
    assert undocumented == []
