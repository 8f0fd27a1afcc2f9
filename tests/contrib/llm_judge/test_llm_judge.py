"""`llm-judge` scorer: the score parser, the hf backend on a tiny Llama, the openai backend against a real local server."""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import polars as pl
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import dqf
from scorer_helpers import scorer_batch
from dqf.lm import retry_after_seconds
from dqf.testing import build_plugin
from http_servers import Serving
from dqf_contrib.llm_judge.llm_judge import ALPAGASUS_PROMPT, ALPAGASUS_SYSTEM, LlmJudgeScorer, fill_prompt, parse_score

KEY = "sk-test-SECRET-0123456789abcdef"
KEY_ENV = "DQF_TEST_JUDGE_KEY"


@pytest.mark.parametrize("text, want", [
    ("4", 4.0), ("Score: 4.5", 4.5), ("**4/5**", 4.0), ("5", 5.0), ("0", 0.0), ("0.5\nbecause", 0.5),
    ("\n\n  3\nThe response is fine.", 3.0), ("Rating: 2 out of 5", 2.0), ("4.\nExplanation", 4.0),
    ("Score: 3/5 - mostly right", 3.0), ("Accuracy: .5", 0.5), ("5.0", 5.0), ("**Score:** 1", 1.0),
])
def test_parser_reads_first_number_of_first_line(text, want):
    assert parse_score(text) == (want, None)


@pytest.mark.parametrize("text, reason", [
    ("", "empty answer"), ("   \n\n", "empty answer"), (None, "empty answer"),
    ("The response is accurate.\n5", "no number on the first line"),  # never looks past the first line
    ("7/10", "score 7 outside 0-5"), ("Score: 10", "score 10 outside 0-5"), ("-1", "score -1 outside 0-5"),
    ("5.5", "score 5.5 outside 0-5"), ("I cannot rate this.", "no number on the first line"),
])
def test_parser_gives_null_and_reason(text, reason):
    score, why = parse_score(text)
    assert score is None and why.startswith(reason)


frame = scorer_batch


ROWS = [("Name a color.", "", "Blue."), ("Add the numbers.", "2 and 3", "The sum is 5."),
        ("Explain the topic in detail please and thank you.", "", "It is a long answer about the topic here."),
        ("Translate to french", "hello", "bonjour")]


# -- hf backend ------------------------------------------------------------------------------------

def test_hf_expected_score_equals_digit_probability_weighted_sum(tiny_models):
    path = tiny_models["llama"]
    s = build_plugin("scorer", "llm-judge", model=str(path), batch_size=3, device="cpu")
    s.setup()
    assert s.stats()["backend"] == "transformers"
    out = s.score(frame(ROWS))
    assert dict(out.schema) == s.columns() == {"llm_judge": pl.Float64, "llm_judge_reason": pl.String}
    assert out["llm_judge_reason"].null_count() == len(ROWS)

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    digits = [tok.convert_tokens_to_ids(d) for d in "012345"]
    want = []
    for ins, inp, resp in ROWS:  # one row, no padding, straight from the logits
        messages = [{"role": "system", "content": ALPAGASUS_SYSTEM},
                    {"role": "user", "content": fill_prompt(ALPAGASUS_PROMPT, ins, inp, resp)}]
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, -1].double()
        p = torch.softmax(logits[digits], dim=-1).numpy()
        want.append(float((p * np.arange(6)).sum()))
    got = out["llm_judge"].to_numpy()
    assert ((got >= 0) & (got <= 5)).all()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert s.stats()["rows_scored"] == len(ROWS) and s.stats()["null_scores"] == 0
    # batch size is speed only; mode and prompt are part of the cache key
    base = s.cache_key()
    assert build_plugin("scorer", "llm-judge", model=str(path), batch_size=1, device="cpu").cache_key() == base
    assert build_plugin("scorer", "llm-judge", model=str(path), device="cpu", mode="generate").cache_key() != base
    assert build_plugin("scorer", "llm-judge", model=str(path), device="cpu", system="").cache_key() != base


def test_hf_generate_mode_parses_or_gives_reason(tiny_models):
    s = build_plugin("scorer", "llm-judge", model=str(tiny_models["llama"]), mode="generate", max_new_tokens=4,
                     device="cpu")
    s.setup()
    out = s.score(frame(ROWS[:2]))
    for score, reason in out.iter_rows():  # a random model rarely writes a number: never invent one
        assert (score is None) != (reason is None)
        assert score is None or 0 <= score <= 5


# -- openai backend against a real local server ------------------------------------------------------

class JudgeServer(Serving):
    """An OpenAI-compatible chat-completions server on 127.0.0.1 whose answer depends on the instruction."""

    def __init__(self, slow_seconds=1.0, hold=True):
        self.lock = threading.Lock()
        self.overlap = threading.Condition(self.lock)
        self.calls = 0
        self.inflight = 0
        self.max_inflight = 0
        self.attempts: dict[str, int] = {}
        self.auth: set[str] = set()
        self.bodies: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                with server.lock:
                    server.calls += 1
                    server.inflight += 1
                    server.max_inflight = max(server.max_inflight, server.inflight)
                    server.overlap.notify_all()
                self._done = False
                try:
                    self._answer()
                finally:
                    self._finish()

            def _finish(self):
                # Once, before the response goes out: the client may send its next request the moment it has
                # the answer, and that must not count as a third request in flight.
                if not self._done:
                    self._done = True
                    with server.lock:
                        server.inflight -= 1

            def _answer(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                user = body["messages"][-1]["content"]
                tag = user.split("\n", 1)[0].removeprefix("Instruction: ")
                with server.lock:
                    server.auth.add(self.headers.get("Authorization", ""))
                    server.bodies.append(body)
                    n = server.attempts[tag] = server.attempts.get(tag, 0) + 1
                if hold:  # hold a request until a second one arrives (or 1 s), so overlap is seen
                    with server.overlap:
                        server.overlap.wait_for(lambda: server.inflight >= 2, timeout=1.0)
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": "no such route"})
                if tag.startswith("busy") and n <= 2:
                    return self._send(429, {"error": "rate limited"})
                if tag.startswith("flaky") and n <= 2:
                    return self._send(500, {"error": "internal"})
                if tag.startswith("wait") and n == 1:  # "wait 1" asks for 1 s; "wait 3600" for an hour
                    return self._send(429, {"error": "slow down"}, retry_after=tag.split()[1])
                if tag.startswith("unavailable") and n == 1:
                    return self._send(503, {"error": "overloaded"}, retry_after=tag.split()[1])
                if tag.startswith("slow") and n == 1:
                    time.sleep(slow_seconds)
                if tag.startswith("hang"):
                    time.sleep(slow_seconds)
                if tag.startswith("broken"):
                    return self._send(200, "not json at all", raw=True)
                content = "I am not sure what to say.\n5" if tag.startswith("garbage") else \
                    f"Score: {len(tag) % 6}\nThe answer is accurate."
                self._send(200, {"choices": [{"message": {"role": "assistant", "content": content}}]})

            def _send(self, code, payload, raw=False, retry_after=None):
                data = (payload if raw else json.dumps(payload)).encode()
                self._finish()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    if retry_after is not None:
                        self.send_header("Retry-After", retry_after)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    pass

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        httpd.daemon_threads = True
        self._serve(httpd)


@pytest.fixture
def server(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(KEY_ENV, KEY)
    with JudgeServer(slow_seconds=2.0) as srv:
        yield srv


def http_scorer(url, **opts):
    base = dict(backend="openai", model="judge-1", base_url=url, api_key_env=KEY_ENV, concurrency=2, timeout=0.8,
                max_retries=3, backoff=0.01)
    s = LlmJudgeScorer(LlmJudgeScorer.Options(**{**base, **opts}))
    s.check()
    s.setup()
    return s


def test_http_backend_answers_garbage_retries_and_timeouts(server):
    rows = [("good one", "", "a"), ("good three", "x", "b"), ("garbage", "", "c"), ("busy", "", "d"),
            ("flaky", "", "e"), ("slow", "", "f"), ("broken", "", "g"), ("hang", "", "h")]
    s = http_scorer(server.url, max_retries=2)
    out = s.score(frame(rows))
    got = dict(zip([r[0] for r in rows], out.select("llm_judge", "llm_judge_reason").iter_rows()))
    assert got["good one"] == (len("good one") % 6, None) and got["good three"] == (len("good three") % 6, None)
    assert got["garbage"][0] is None and got["garbage"][1].startswith("no number on the first line")
    assert got["busy"] == (len("busy") % 6, None) and server.attempts["busy"] == 3  # two 429s, then success
    assert got["flaky"] == (len("flaky") % 6, None) and server.attempts["flaky"] == 3  # two 500s, then success
    assert got["slow"] == (len("slow") % 6, None) and server.attempts["slow"] == 2  # timed out once, retried
    assert got["broken"][0] is None and got["broken"][1].startswith("malformed response")
    assert got["hang"] == (None, "request failed after 3 attempts: timeout after 0.8 s")
    assert server.attempts["hang"] == 3
    assert server.auth == {f"Bearer {KEY}"}
    body = server.bodies[0]
    assert body["model"] == "judge-1" and body["temperature"] == 0.0
    assert body["messages"][0] == {"role": "system", "content": ALPAGASUS_SYSTEM}
    assert body["messages"][1]["content"].startswith("Instruction: ")
    st = s.stats()
    assert st["rows_scored"] == 8 and st["null_scores"] == 3 and st["failed_rows"] == 1
    assert st["failure_reasons"] == {"timeout after 0.8 s": 1}
    assert st["retries"] == 2 + 2 + 1 + 2
    assert out["_failed"].to_list() == [r[0] == "hang" for r in rows]  # only the request that ran out of retries
    assert KEY not in json.dumps(s.describe()) and KEY not in json.dumps(st)


def test_http_client_errors_fail_the_run_without_the_key(server):
    s = http_scorer(server.url + "/wrong")
    with pytest.raises(dqf.DqfError) as err:
        s.score(frame(ROWS[:1]))
    assert "HTTP 404" in str(err.value) and KEY not in str(err.value)


def test_options_are_checked():
    def bad(**opts):
        with pytest.raises(ValueError) as err:
            LlmJudgeScorer(LlmJudgeScorer.Options(model="m", **opts)).check()
        return str(err.value)

    assert "needs base_url" in bad(backend="openai")
    assert "mode 'expected'" in bad(backend="openai", base_url="http://x", mode="expected")
    assert "placeholders" in bad(prompt="rate this")
    assert "backend 'openai'" in bad(base_url="http://x")


def test_cache_key_covers_what_changes_answers_only(monkeypatch):
    def key(**opts):
        base = dict(backend="openai", model="m", base_url="http://h/v1")
        return LlmJudgeScorer(LlmJudgeScorer.Options(**{**base, **opts})).cache_key()

    k = key()
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    assert key() == k == key(concurrency=16, api_key_env="OTHER", timeout=5, max_retries=0, backoff=3)
    for change in (dict(model="m2"), dict(base_url="http://other/v1"), dict(system="Rate it."),
                   dict(prompt="{instruction} {input} {response} rate"), dict(temperature=0.5)):
        assert key(**change) != k, change


RECIPE = """\
name = "judge"
[input]
path = "pool.jsonl"
[output]
dir = "out{n}"
[[steps]]
id = "j"
score = {{ plugin = "llm-judge", backend = "openai", model = "judge-1", base_url = "{url}", api_key_env = "{env}", concurrency = 2, timeout = 5, max_retries = 2, backoff = 0.01 }}
"""


def test_run_end_to_end_key_never_recorded_and_rerun_is_cached(server, write_jsonl, write_recipe, tmp_path, caplog,
                                                               capsys):
    caplog.set_level(logging.DEBUG)
    rows = [{"instruction": f"good {'x' * i}", "input": "", "output": f"answer {i}"} for i in range(6)]
    rows.append({"instruction": "garbage", "input": "", "output": "?"})
    write_jsonl(rows)
    res = dqf.run(write_recipe(RECIPE.format(n=1, url=server.url, env=KEY_ENV)))
    assert server.calls == 7
    assert server.max_inflight == 2  # concurrency = 2: bounded, and actually concurrent
    assert res.rows["llm_judge"].to_list() == [len(r["instruction"]) % 6 for r in rows[:-1]] + [None]  # input order
    reasons = res.rows.filter(pl.col("llm_judge").is_null())["llm_judge_reason"].to_list()
    assert len(reasons) == 1 and reasons[0].startswith("no number on the first line")

    res2 = dqf.run(write_recipe(RECIPE.format(n=2, url=server.url, env=KEY_ENV), "r2.toml"))
    assert server.calls == 7  # every answer came from the cache
    assert res2.rows["llm_judge"].to_list() == res.rows["llm_judge"].to_list()
    assert server.auth == {f"Bearer {KEY}"}

    out = capsys.readouterr()
    texts = [out.out, out.err, caplog.text]
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "rows.parquet" for p in files) and any(p.name == "manifest.json" for p in files)
    leaked = [str(p) for p in files if KEY.encode() in p.read_bytes()] + [t for t in texts if KEY in t]
    assert leaked == []


# -- failed requests are not cached; Retry-After is honoured ------------------------------------------

def test_failed_rows_are_not_cached_and_a_rerun_retries_only_them(server, write_jsonl, write_recipe):
    # "flaky" answers 500 to its first two requests: with max_retries = 1 the first run gives up on it
    rows = [{"instruction": f"good {'x' * i}", "input": "", "output": f"answer {i}"} for i in range(3)]
    rows += [{"instruction": "flaky one", "input": "", "output": "?"}, {"instruction": "garbage", "input": "", "output": "?"}]
    write_jsonl(rows)
    recipe = RECIPE.replace("max_retries = 2", "max_retries = 1")
    res = dqf.run(write_recipe(recipe.format(n=1, url=server.url, env=KEY_ENV)))
    assert server.calls == 3 + 2 + 1
    assert res.rows["llm_judge"].to_list()[:3] == [len(r["instruction"]) % 6 for r in rows[:3]]
    assert res.rows["llm_judge"].to_list()[3:] == [None, None]
    reasons = res.rows["llm_judge_reason"].to_list()
    assert reasons[3] == "request failed after 2 attempts: HTTP 500"
    assert reasons[4].startswith("no number on the first line")  # a parsed answer: cached as null
    step = res.manifest["steps"][0]
    assert step["cache"] == {"hits": 0, "computed": 5, "failed": 1}
    assert step["stats"]["failed_rows"] == 1 and step["stats"]["failure_reasons"] == {"HTTP 500": 1}
    assert "_failed" not in res.rows.columns

    res2 = dqf.run(write_recipe(recipe.format(n=2, url=server.url, env=KEY_ENV), "r2.toml"))
    assert server.calls == 6 + 1 and server.attempts["flaky one"] == 3  # only the failed row was asked again
    assert res2.rows["llm_judge"].to_list() == [len(r["instruction"]) % 6 for r in rows[:4]] + [None]
    assert res2.rows["llm_judge_reason"].to_list()[3] is None
    assert res2.manifest["steps"][0]["cache"] == {"hits": 4, "computed": 1}
    assert "failed_rows" not in res2.manifest["steps"][0]["stats"]

    dqf.run(write_recipe(recipe.format(n=3, url=server.url, env=KEY_ENV), "r3.toml"))
    assert server.calls == 7  # now everything is cached


@pytest.fixture
def quick_server(monkeypatch):
    """The judge server without the overlap hold, so a request's timing is the client's own."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    with JudgeServer(hold=False) as srv:
        yield srv


@pytest.mark.parametrize("tag, cap, low, high", [
    ("wait 1", 60.0, 0.9, 3.0),  # 429, Retry-After: 1 -> about one second, not the 0.01 s backoff
    ("unavailable 1", 60.0, 0.9, 3.0),  # 503 likewise
    ("wait 3600", 0.3, 0.25, 2.0),  # an hour asked for, capped by max_retry_after
])
def test_retry_after_is_honoured_and_capped(quick_server, tag, cap, low, high):
    s = http_scorer(quick_server.url, backoff=0.01, max_retry_after=cap, timeout=5)
    t = time.perf_counter()
    out = s.score(frame([(tag, "", "a")]))
    elapsed = time.perf_counter() - t
    assert out["llm_judge"].to_list() == [len(tag) % 6]
    assert quick_server.attempts[tag] == 2 and quick_server.calls == 2
    assert low <= elapsed < high
    assert s.stats()["retry_after_waits"] == 1 and "failed_rows" not in s.stats()


def test_retry_after_header_forms():
    assert retry_after_seconds("1") == 1.0 and retry_after_seconds(" 2.5 ") == 2.5
    assert retry_after_seconds("-3") == 0.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == pytest.approx(10.0)
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0  # in the past
