"""`reward-model` scorer: parity with MoDS's one-pair loop, question building, truncation, int8, recipes and errors.

Models are tiny random DeBERTa-v2 classifiers loaded through the real ``from_pretrained`` path.
The session fixture's classifier gives near-constant scores (std ~1e-5), which would make a
1e-4 parity check vacuous, so most tests use a copy built from its config with a wider weight
init and its bias centred on the pool, whose scores spread over about a unit.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError

import dqf
import dqf.registry
from scorer_helpers import scorer_batch
from dqf import DqfError, RecipeError

POOL = Path(__file__).resolve().parents[2] / "examples" / "data" / "alpaca_2k.jsonl"
ROWS = [json.loads(line) for line in POOL.read_text(encoding="utf-8").splitlines()[:50]]
TINY_POSITIONS = 128  # max_position_embeddings of the tiny DeBERTa (absolute positions are on)


frame = scorer_batch


def mods_question(row) -> str:
    return row["instruction"] + "\n" + row["input"] if row.get("input") else row["instruction"]


def one_pair_loop(path, rows, max_length=TINY_POSITIONS, model=None) -> np.ndarray:
    """The reference: MoDS's loop, one tokenizer(question, answer) and one forward pass per row."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = model or AutoModelForSequenceClassification.from_pretrained(path).eval()
    out = []
    with torch.inference_mode():
        for r in rows:
            enc = tok(mods_question(r), r["output"], return_tensors="pt", truncation=True, max_length=max_length)
            out.append(model(**enc).logits[0, 0].item())
    return np.array(out)


def pair_lengths(path, rows) -> np.ndarray:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    return np.array([len(tok(mods_question(r), r["output"])["input_ids"]) for r in rows])


def spearman(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


@pytest.fixture(scope="module")
def RM():
    info = dqf.registry.build_plugin_manager().get("scorer", "reward-model")
    assert info.provider.distribution == "dqf"
    assert info.cls.__module__ == "dqf_plugins.reward_model"
    return info.cls


@pytest.fixture(scope="module")
def varied(tmp_path_factory):
    import tiny_models as tm

    return tm.tiny_reward_model(tmp_path_factory.mktemp("rm") / "varied", [(mods_question(r), r["output"]) for r in ROWS])


@pytest.fixture(scope="module")
def reference(varied):
    return one_pair_loop(varied, ROWS)


def run_scorer(cls, batch, **opts):
    scorer = cls(cls.Options(**opts))
    scorer.setup()
    out = scorer.score(batch)
    assert isinstance(out, pl.DataFrame) and out.height == batch.height
    assert dict(out.schema) == dict(scorer.columns())
    return scorer, out[scorer.options.column].to_numpy()


# -- scores ---------------------------------------------------------------------------------
def test_batched_length_sorted_scores_equal_one_pair_loop(RM, varied, reference):
    assert reference.std() > 0.1  # the parity check below would be vacuous on near-constant scores
    lengths = pair_lengths(varied, ROWS)
    assert (np.diff(lengths) < 0).any()  # input is not already length-sorted: the scorer must reorder and restore
    from dqf_plugins.reward_model import sub_batches

    # some forward passes really mix lengths, so padding is exercised
    assert any(len({int(lengths[i]) for i in g}) > 1 for g in sub_batches(lengths.tolist(), 16))
    scorer, got = run_scorer(RM, frame(ROWS), model=str(varied), batch_size=16)
    assert np.abs(got - reference).max() < 1e-4
    _, one = run_scorer(RM, frame(ROWS[:20]), model=str(varied), batch_size=1)
    assert np.abs(one - got[:20]).max() < 1e-4  # padding inside a sub-batch does not move a row's score


def test_scores_follow_their_rows_when_input_is_shuffled(RM, varied, reference):
    perm = np.random.default_rng(7).permutation(len(ROWS))
    _, got = run_scorer(RM, frame([ROWS[i] for i in perm]), model=str(varied), batch_size=8)
    assert np.abs(got - reference[perm]).max() < 1e-4


def test_fixture_model_loads_and_matches_loop(RM, tiny_models):
    rows = ROWS[:12]
    _, got = run_scorer(RM, frame(rows), model=str(tiny_models["deberta"]), batch_size=4)
    assert np.abs(got - one_pair_loop(tiny_models["deberta"], rows)).max() < 1e-6


def test_question_is_instruction_plus_newline_plus_input_only_when_input_given(RM, varied):
    from dqf_plugins.reward_model import questions_and_answers

    rows = [{"instruction": "Summarise the text.", "input": "", "output": "A short summary."},
            {"instruction": "Summarise the text.", "input": "cats are great pets", "output": "A short summary."}]
    questions, answers = questions_and_answers(frame(rows))
    assert questions == ["Summarise the text.", "Summarise the text.\ncats are great pets"]
    assert answers == ["A short summary.", "A short summary."]

    _, got = run_scorer(RM, frame(rows), model=str(varied))
    assert abs(got[0] - got[1]) > 1e-3  # only the input differs, and it reaches the model
    assert np.abs(got - one_pair_loop(varied, rows)).max() < 1e-4


def test_sub_batches_are_length_sorted_bounded_and_cap_padding():
    from dqf_plugins.reward_model import MAX_PADDING, sub_batches

    lengths = [int(n) for n in np.random.default_rng(3).integers(5, 400, size=200)]
    groups = sub_batches(lengths, 16)
    assert sorted(i for g in groups for i in g) == list(range(200))
    assert all(1 <= len(g) <= 16 for g in groups)
    flat = [lengths[i] for g in groups for i in g]
    assert flat == sorted(lengths)
    for g in groups:
        real = sum(lengths[i] for i in g)
        assert max(lengths[i] for i in g) * len(g) <= (1 + MAX_PADDING) * real
    assert max(len(g) for g in groups) == 16  # dense lengths still fill whole sub-batches
    assert sub_batches([10] * 40, 16) == [list(range(16)), list(range(16, 32)), list(range(32, 40))]
    assert sub_batches([10, 400], 16) == [[0], [1]]  # 390 pad tokens on 410 real ones: run apart


def test_custom_column_and_empty_batch(RM, varied):
    scorer, got = run_scorer(RM, frame(ROWS[:3]), model=str(varied), column="rm_score")
    assert list(scorer.columns()) == ["rm_score"] and got.shape == (3,)
    empty = scorer.score(frame([]))
    assert empty.height == 0 and dict(empty.schema) == {"rm_score": pl.Float64}


# -- truncation -----------------------------------------------------------------------------
def test_truncated_rows_counted_and_scored_as_truncated_pairs(RM, varied, reference):
    lengths = pair_lengths(varied, ROWS)
    long = lengths > 16
    assert 0 < long.sum() < len(ROWS)
    scorer, got = run_scorer(RM, frame(ROWS), model=str(varied), max_length=16, batch_size=8)
    assert scorer.stats() == {"rows_scored": len(ROWS), "truncated_rows": int(long.sum()), "max_length": 16}
    assert np.abs(got - one_pair_loop(varied, ROWS, max_length=16)).max() < 1e-4
    assert np.abs(got[~long] - reference[~long]).max() < 1e-4  # short pairs are untouched


def test_max_length_is_capped_by_the_models_position_table(RM, varied, reference):
    lengths = pair_lengths(varied, ROWS)
    assert (lengths > TINY_POSITIONS).any()  # without the cap these rows would index past the position table
    scorer, got = run_scorer(RM, frame(ROWS), model=str(varied), max_length=100_000)
    assert scorer.stats()["max_length"] == TINY_POSITIONS
    assert scorer.stats()["truncated_rows"] == int((lengths > TINY_POSITIONS).sum())
    assert np.abs(got - reference).max() < 1e-4


# -- int8 -----------------------------------------------------------------------------------
def test_int8_runs_and_ranks_like_fp32(RM, varied, reference):
    scorer, got = run_scorer(RM, frame(ROWS), model=str(varied), quantize="int8")
    assert np.isfinite(got).all()
    assert np.abs(got - reference).max() > 1e-6  # the weights really were quantized
    assert spearman(got, reference) >= 0.9
    fp32 = RM(RM.Options(model=str(varied)))
    assert scorer.identity()["quantize"] == "int8-per-token" and scorer.cache_key() != fp32.cache_key()


def test_int8_rejected_on_gpu_and_with_half_precision(RM):
    with pytest.raises(ValidationError, match="CPU only"):
        RM.Options(quantize="int8", device="cuda")
    with pytest.raises(ValidationError, match="float32"):
        RM.Options(quantize="int8", dtype="bfloat16")
    assert RM.Options(quantize="int8", device="cpu").quantize == "int8"


# -- model errors ---------------------------------------------------------------------------
def test_multi_label_classifier_is_rejected(RM, tiny_models, tmp_path):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    cfg = AutoConfig.from_pretrained(tiny_models["deberta"])
    cfg.num_labels = 3
    AutoModelForSequenceClassification.from_config(cfg).save_pretrained(tmp_path / "three")
    scorer = RM(RM.Options(model=str(tmp_path / "three")))
    with pytest.raises(DqfError, match="3 output labels"):
        scorer.setup()


def test_bare_encoder_is_rejected(RM, tiny_models):
    scorer = RM(RM.Options(model=str(tiny_models["bert"])))
    with pytest.raises(DqfError, match="not a sequence classifier"):
        scorer.setup()


# -- recipes --------------------------------------------------------------------------------
RECIPE = """
name = "reward"

[input]
path = "pool.jsonl"

[output]
dir = "out"

[[steps]]
id = "quality"
score = {{ plugin = "reward-model", model = {model}{extra} }}
where = "reward > 0.0"
"""


def recipe(write_recipe, model, extra=""):
    return write_recipe(RECIPE.format(model=json.dumps(str(model)), extra=extra))


def test_recipe_filters_on_reward_and_reruns_from_cache(varied, write_jsonl, write_recipe, tmp_path, reference):
    import shutil

    model = tmp_path / "rm"
    shutil.copytree(varied, model)
    write_jsonl(ROWS)
    path = recipe(write_recipe, model)

    first = dqf.run(path)
    m = first.manifest
    assert m["steps"][0]["cache"] == {"hits": 0, "computed": len(ROWS)}
    assert m["steps"][0]["stats"]["truncated_rows"] == int((pair_lengths(varied, ROWS) > TINY_POSITIONS).sum())
    assert m["plugins"][0]["identity"]["model"]["files"]
    rewards = first.rows["reward"].to_numpy()
    assert np.abs(np.sort(rewards) - np.sort(reference)).max() < 1e-4
    expected = int((rewards > 0).sum())
    assert 0 < expected < len(ROWS)
    assert m["counts"]["selected"] == expected == first.selected.height
    assert (first.selected["reward"] > 0).all()

    again = dqf.run(path)
    assert again.manifest["steps"][0]["cache"] == {"hits": len(ROWS), "computed": 0}
    assert again.rows["reward"].to_list() == first.rows["reward"].to_list()

    cfg = json.loads((model / "config.json").read_text())
    cfg["dqf_test_note"] = "edited"  # changed model files must not be served old scores
    (model / "config.json").write_text(json.dumps(cfg))
    assert dqf.run(path).manifest["steps"][0]["cache"]["computed"] == len(ROWS)


def test_unknown_option_names_its_key(varied, write_jsonl, write_recipe):
    write_jsonl(ROWS[:3])
    with pytest.raises(RecipeError, match=r"steps\[0\]\.score\.maxlength: unknown key"):
        dqf.validate(recipe(write_recipe, varied, extra=", maxlength = 64"))
    with pytest.raises(RecipeError, match=r"steps\[0\]\.score: .*CPU only"):
        dqf.validate(recipe(write_recipe, varied, extra=', quantize = "int8", device = "cuda"'))


def test_missing_model_is_one_line_error(write_jsonl, write_recipe, tmp_path, capsys):
    from dqf.cli import main

    write_jsonl(ROWS[:3])
    path = recipe(write_recipe, tmp_path / "no-such-model")
    with pytest.raises(DqfError) as exc:
        dqf.run(path)
    assert len(exc.value.lines) == 1 and "\n" not in str(exc.value)
    assert "no-such-model" in str(exc.value) and "no such folder" in str(exc.value)

    with pytest.raises(SystemExit) as code:
        main(["run", str(path)])
    assert code.value.code == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("dqf: error")]  # progress lines may precede it
    assert len(errors) == 1 and errors[0].startswith("dqf: error: ") and "(reward-model)" in errors[0]
    assert "no-such-model': no such folder or file" in errors[0]
    assert "Traceback" not in err


def test_relative_model_path_resolves_against_the_recipe_not_the_cwd(varied, tmp_path, monkeypatch):
    import shutil

    (tmp_path / "proj" / "models").mkdir(parents=True)
    shutil.copytree(varied, tmp_path / "proj" / "models" / "rm")
    (tmp_path / "proj" / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS[:4]), encoding="utf-8")
    path = tmp_path / "proj" / "recipe.toml"
    path.write_text('''name = "rel"
[input]
path = "pool.jsonl"
[output]
dir = "out"
[[steps]]
id = "q"
score = { plugin = "reward-model", model = "./models/rm" }
''', encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = dqf.run(path)
    assert result.rows["reward"].null_count() == 0 and result.rows.height == 4


def test_batch_size_defaults_to_16_on_cpu_and_128_on_a_gpu_unless_given(RM):
    import torch

    scorer = RM(RM.Options())
    assert scorer.pairs_per_pass(torch.device("cpu")) == 16
    assert scorer.pairs_per_pass(torch.device("cuda")) == 128
    assert RM(RM.Options(batch_size=4)).pairs_per_pass(torch.device("cuda")) == 4
