"""`dqf compare --finetune`: one fixed budget per strategy, a real held-out loss and judge, deterministic and cached."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

import dqf
import dqf.registry
from dqf import DqfError
from dqf.compare.finetune import BASE_MODEL, finetune_eval, fixed_budget
from dqf.engine.progress import Reporter

POOL = Path(__file__).resolve().parents[3] / "examples" / "data" / "alpaca_2k.jsonl"
STEPS = 8


def frame(start: int, n: int) -> pl.DataFrame:
    lines = POOL.read_text(encoding="utf-8").splitlines()[start:start + n]
    return pl.DataFrame([json.loads(line) for line in lines]).select("instruction", "input", "output")


class Recorder(Reporter):
    """Keeps every progress bar's description, total and how far it got."""

    def __init__(self):
        self.bars: list[list] = []

    def task(self, description, total):
        import contextlib

        bar = [description, total, 0]
        self.bars.append(bar)

        @contextlib.contextmanager
        def cm():
            yield lambda n=1: bar.__setitem__(2, bar[2] + n)

        return cm()


@pytest.fixture(scope="module")
def models(tiny_models, tmp_path_factory):
    import tiny_models as tm

    # Logits with enough range that LoRA (which cannot touch the tied embeddings) moves the loss by nats.
    llama = tm.tiny_llama(tmp_path_factory.mktemp("ft_llama") / "llama", initializer_range=0.2)
    return {"llama": str(llama), "bert": str(tiny_models["bert"])}


def options(models, cache: Path, **kw) -> dict:
    return {"model": models["llama"], "steps": STEPS, "batch_size": 4, "learning_rate": 2e-2, "max_length": 96,
            "max_new_tokens": 4, "cache_dir": str(cache),
            "judge": {"plugin": "reference-similarity", "reference": "reference_output",
                      "embedder": {"plugin": "hf-encoder", "model": models["bert"], "pooling": "mean"}}, **kw}


@pytest.fixture(scope="module")
def host():
    return dqf.registry.build_plugin_manager()


@pytest.fixture(scope="module")
def heldout():
    return frame(0, 6)


@pytest.fixture(scope="module")
def evaluated(models, host, heldout, tmp_path_factory):
    cache = tmp_path_factory.mktemp("ft_cache")
    # Three sizes (6, 40, 3 rows) under one budget of STEPS steps of 4 rows.
    strategies = {"own": heldout, "unrelated": frame(100, 40), "small": frame(200, 3)}
    rec = Recorder()
    res = finetune_eval(strategies, heldout=heldout, host=host, options=options(models, cache), progress=rec)
    return {"res": res, "cache": cache, "strategies": strategies, "bars": rec.bars}


def test_fixed_budget_cycles_rows_evenly():
    sched = fixed_budget(7, 48, seed=3)
    counts = Counter(sched)
    assert len(sched) == 48 and set(counts) == set(range(7))
    assert max(counts.values()) - min(counts.values()) <= 1
    big = fixed_budget(100, 48, seed=3)
    assert len(set(big)) == 48  # more rows than the budget: a sample without repetition
    assert fixed_budget(7, 48, seed=3) == sched and fixed_budget(7, 48, seed=4) != sched


def test_every_strategy_gets_the_same_number_of_steps(evaluated):
    res = evaluated["res"]
    assert list(res) == [BASE_MODEL, "own", "unrelated", "small"]
    assert res[BASE_MODEL]["steps"] == 0 and res[BASE_MODEL]["train_rows"] == 0
    for name in ("own", "unrelated", "small"):
        r = res[name]
        assert r["steps"] == STEPS, name
        assert r["train_rows"] == evaluated["strategies"][name].height
        assert set(r) >= {"eval_loss", "judge_mean", "train_rows", "steps", "seconds"}
        assert r["seconds"] > 0 and r["cached"] is False
    # 3, 6 and 40 rows: the same steps of the same batch size, so the same number of examples seen.
    metas = [json.loads(p.read_text()) for p in evaluated["cache"].rglob("train.json")]
    assert sorted(m["train_rows"] for m in metas) == [3, 6, 40]
    assert {m["examples_seen"] for m in metas} == {STEPS * 4} and {m["steps"] for m in metas} == {STEPS}
    # A progress bar per strategy: fine-tuning (steps) and generating (held-out rows).
    bars = {b[0]: b[1:] for b in evaluated["bars"]}
    assert bars["fine-tune small"] == [STEPS, STEPS] and bars["generate small"] == [6, 6]
    assert "fine-tune base model" not in bars and bars["generate base model"] == [6, 6]


def test_training_on_the_heldout_rows_lowers_their_loss_most(evaluated):
    res = evaluated["res"]
    own, unrelated, base = res["own"]["eval_loss"], res["unrelated"]["eval_loss"], res[BASE_MODEL]["eval_loss"]
    assert all(isinstance(x, float) and math.isfinite(x) for x in (own, unrelated, base))
    # Margins seen over seeds 0-4: own 6.6-6.8 nats, unrelated 7.8-8.1, base 8.65.
    assert own < unrelated - 0.5, (own, unrelated)
    assert own < base - 1.0, (own, base)
    assert res["own"]["heldout_overlap"] == 6 and res["unrelated"]["heldout_overlap"] == 0


def test_judge_scores_the_generated_answers_against_the_references(evaluated, models, host, heldout):
    """judge_mean is the mean reference-similarity of the cached generations, recomputed here independently."""
    from dqf.recipe import instantiate

    res = evaluated["res"]
    evals = {p.parent.name: json.loads(p.read_text()) for p in evaluated["cache"].rglob("eval.json")}
    assert len(evals) == 4
    judge = instantiate(host, "scorer", options(models, evaluated["cache"])["judge"], "judge", [])
    judge.setup()
    means = []
    for data in evals.values():
        batch = heldout.with_columns(output=pl.Series(data["generated"], dtype=pl.String),
                                     reference_output=heldout["output"], id=pl.lit("x"), n_turns=pl.lit(1))
        means.append(judge.score(batch)["reference_similarity"].mean())
    got = [r["judge_mean"] for r in res.values()]
    assert all(isinstance(g, float) and -1 <= g <= 1 for g in got)
    assert sorted(got) == pytest.approx(sorted(means), abs=1e-9)
    assert all(r["judge_rows"] == 6 for r in res.values())


def test_same_seed_same_numbers_and_a_rerun_comes_from_the_cache(evaluated, models, host, heldout, tmp_path):
    keys = ("eval_loss", "judge_mean", "train_rows", "steps")
    # A fresh cache, and gradient checkpointing, which saves memory but must not change a number.
    fresh = finetune_eval({"own": heldout}, heldout=heldout, host=host, progress=None,
                          options=options(models, tmp_path / "other_cache", gradient_checkpointing=True))
    for name in (BASE_MODEL, "own"):
        assert {k: fresh[name][k] for k in keys} == {k: evaluated["res"][name][k] for k in keys}
    # Same rows in another order are the same selection: cached, no model trained or loaded.
    rec = Recorder()
    again = finetune_eval({"own": heldout.reverse()}, heldout=heldout, host=host,
                          options=options(models, evaluated["cache"]), progress=rec)
    assert again["own"]["cached"] is True and rec.bars == []
    assert {k: again["own"][k] for k in keys} == {k: evaluated["res"]["own"][k] for k in keys}


def test_a_judge_that_scores_nothing_gives_none_not_a_number(models, host, heldout, tmp_path, monkeypatch):
    from dqf_plugins.reference_similarity import ReferenceSimilarityScorer

    def nulls(self, batch):
        return pl.DataFrame({"reference_similarity": [None] * batch.height},
                            schema={"reference_similarity": pl.Float64})

    monkeypatch.setattr(ReferenceSimilarityScorer, "score", nulls)
    res = finetune_eval({}, heldout=heldout, host=host, options=options(models, tmp_path), progress=None)
    assert res[BASE_MODEL]["judge_mean"] is None and "judge_error" in res[BASE_MODEL]
    assert math.isfinite(res[BASE_MODEL]["eval_loss"])


def test_bad_options_and_names_fail_before_any_work(models, host, heldout, tmp_path):
    with pytest.raises(DqfError, match="finetune.stepz"):
        finetune_eval({}, heldout=heldout, host=host, options={"stepz": 3}, progress=None)
    with pytest.raises(DqfError, match="finetune.judge.plugin"):
        finetune_eval({}, heldout=heldout, host=host, options=options(models, tmp_path, judge="no-such-judge"),
                      progress=None)
    with pytest.raises(DqfError, match="base model"):
        finetune_eval({BASE_MODEL: heldout}, heldout=heldout, host=host, options=options(models, tmp_path),
                      progress=None)
    with pytest.raises(DqfError, match="selected no rows"):
        finetune_eval({"empty": heldout.clear()}, heldout=heldout, host=host, options=options(models, tmp_path),
                      progress=None)
    with pytest.raises(DqfError, match=r"finetune\.backend\.plugin: .*'vllmm'.*did you mean 'vllm'"):
        finetune_eval({}, heldout=heldout, host=host, options=options(models, tmp_path, backend="vllmm"),
                      progress=None)
    with pytest.raises(DqfError, match=r"finetune\.backend: base_url must start with http:// or https://"):
        finetune_eval({}, heldout=heldout, host=host, options=options(
            models, tmp_path, backend={"plugin": "openai", "base_url": "127.0.0.1:9/v1", "model": "m"}),
            progress=None)


def test_answers_on_a_server_backend_with_the_adapter_loaded_there_and_failures_asked_again(models, host, heldout,
                                                                                           tmp_path):
    """The held-out answers come from the backend (here a real HTTP server on 127.0.0.1 answering the token ids it
    got); the adapter just trained is loaded into it from its saved folder; the loss stays in this process."""
    from http_servers import RawServer, response

    down = {"on": True}

    def answer(path, headers, body):
        req = json.loads(body)
        if path == "/v1/load_lora_adapter":
            return response(200, {})
        n = len(req["prompt"])
        if down["on"] and n == shortest:
            return response(500, {"error": "overloaded"})
        return response(200, {"choices": [{"text": f" {req['model']} saw {n} tokens ", "index": 0}]})

    from dqf.lm import load_tokenizer, prepare_tokenizer, prompt_ids, resolve_model

    tok = load_tokenizer(resolve_model(models["llama"]))
    prepare_tokenizer(tok)
    lengths = [len(prompt_ids(tok, i, x, "alpaca")) for i, x in zip(heldout["instruction"], heldout["input"])]
    shortest = min(lengths)
    here = finetune_eval({"own": heldout}, heldout=heldout, host=host, options=options(models, tmp_path / "a"),
                         progress=None)
    with RawServer(answer) as srv:
        backend = {"plugin": "openai", "base_url": srv.url, "model": "base", "api_key_env": "DQF_NO_KEY",
                   "max_retries": 0, "prompt_logprobs": False}
        opts = options(models, tmp_path / "b", backend=backend, use_cache=True)
        first = finetune_eval({"own": heldout}, heldout=heldout, host=host, options=opts, progress=None)
        loads = [json.loads(b) for p, _, b in srv.requests if p == "/v1/load_lora_adapter"]
        assert len(loads) == 1 and Path(loads[0]["lora_path"], "adapter_config.json").exists()
        served = {json.loads(b)["model"] for p, _, b in srv.requests if p == "/v1/completions"}
        assert served == {"base", loads[0]["lora_name"]}  # the base model, then the adapter
        # the loss is this process's, on the same adapter: the same numbers as without a backend
        for name in (BASE_MODEL, "own"):
            assert first[name]["eval_loss"] == pytest.approx(here[name]["eval_loss"], rel=1e-6)
        evals = sorted((tmp_path / "b").rglob("eval.json"))
        assert evals == []  # an answer failed: nothing cached, so the next call asks again
        down["on"] = False
        asked = len(srv.requests)
        finetune_eval({"own": heldout}, heldout=heldout, host=host, options=opts, progress=None)
        assert len(srv.requests) > asked
        cached = [json.loads(p.read_text()) for p in sorted((tmp_path / "b").rglob("eval.json"))]
        assert len(cached) == 2 and all(g.endswith(f"saw {n} tokens") for c in cached
                                        for g, n in zip(c["generated"], lengths))
