"""`dqf run` with an openai judge against a server that misbehaves per row: each bad request is a null with its reason,
the run goes on, and the key is nowhere -- stdout, stderr, the run's files, the cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import polars as pl
import pytest

from http_servers import RawServer, chat, response, trickle

KEY = "sk-hostile-5f0c2a9e7d"
RECIPE = """\
name = "judge"
[input]
path = "pool.jsonl"
[output]
dir = "out"
[cache]
dir = "cache"
[[steps]]
id = "j"
score = {{ plugin = "llm-judge", backend = "openai", model = "judge-1", base_url = "{url}", api_key_env = "JUDGE_KEY", concurrency = 4, timeout = 1, max_retries = 1, backoff = 0.01 }}
"""


def judge(other_port):
    def answer(path, headers, body):
        tag = json.loads(body)["messages"][-1]["content"].split("\n", 1)[0].removeprefix("Instruction: ")
        if tag == "redirect":
            return response(302, b"", headers={"Location": f"http://localhost:{other_port}/"})
        if tag == "truncated":
            return response(200, b'{"choices": [', length=500)
        if tag == "trickle":
            return trickle(chat("3"), 0.1)
        return chat(f"{len(tag) % 6}\nfine")
    return answer


def dqf_cli(*args, cwd, key):
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["JUDGE_KEY"] = key
    return subprocess.run([sys.executable, "-c", "from dqf.cli import main; main()", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def leaks(tmp_path, proc, secret):
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    return [str(p) for p in files if secret.encode() in p.read_bytes()] + \
        [name for name, text in (("stdout", proc.stdout), ("stderr", proc.stderr)) if secret in text]


def test_each_failure_mode_is_a_null_with_its_reason_and_the_key_is_nowhere(tmp_path):
    rows = [{"instruction": t, "input": "", "output": "o"} for t in ("good", "redirect", "truncated", "trickle", "ok")]
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with RawServer(lambda *a: chat("1")) as other, RawServer(judge(other.port)) as srv:
        (tmp_path / "r.toml").write_text(RECIPE.format(url=srv.url), encoding="utf-8")
        proc = dqf_cli("run", "r.toml", cwd=tmp_path, key=KEY + "\r\n")  # a key file saved with CRLF
    assert proc.returncode == 0, proc.stderr
    got = pl.read_parquet(tmp_path / "out" / "rows.parquet").select("llm_judge", "llm_judge_reason")
    by = dict(zip([r["instruction"] for r in rows], got.iter_rows()))  # rows.parquet keeps input order
    assert by["good"] == (4.0, None) and by["ok"] == (2.0, None)
    assert by["redirect"][0] is None and by["redirect"][1].startswith(
        f"redirected (HTTP 302 to http://localhost:{other.port}/); dqf does not follow redirects")
    assert by["truncated"] == (None, "request failed after 2 attempts: response body ended after 13 of 500 bytes")
    assert by["trickle"] == (None, "request failed after 2 attempts: timeout after 1 s")
    assert other.requests == []  # the redirect was not followed: the other host never saw the key
    assert {h["authorization"] for _, h, _ in srv.requests} == {f"Bearer {KEY}"}  # stripped, then sent as is
    assert leaks(tmp_path, proc, KEY) == []


def test_a_key_no_header_can_carry_is_one_error_at_validation_without_the_key(tmp_path):
    (tmp_path / "pool.jsonl").write_text('{"instruction": "a", "input": "", "output": "b"}\n', encoding="utf-8")
    (tmp_path / "r.toml").write_text(RECIPE.format(url="http://127.0.0.1:9/v1"), encoding="utf-8")
    bad = KEY[:4] + "\r" + KEY[4:]
    for command in ("validate", "run"):
        proc = dqf_cli(command, "r.toml", cwd=tmp_path, key=bad)
        assert proc.returncode == 1 and proc.stdout == ""
        assert proc.stderr.strip().endswith(
            "steps[0].score: $JUDGE_KEY: the key holds a control character at position 5 of 22, which cannot be "
            "sent in an HTTP header; fix the variable (the key is not printed)"), proc.stderr
        assert "internal error" not in proc.stderr
        assert leaks(tmp_path, proc, KEY[5:]) == [] and leaks(tmp_path, proc, KEY[:4] + "\r") == []


@pytest.mark.parametrize("status", [401, 403])
def test_a_refusal_fails_the_run_in_one_line_without_the_key_even_if_the_server_echoes_it(tmp_path, status):
    (tmp_path / "pool.jsonl").write_text('{"instruction": "a", "input": "", "output": "b"}\n', encoding="utf-8")
    echo = lambda path, headers, body: response(status, {"error": f"rejected {headers['authorization']}"})
    with RawServer(echo) as srv:
        (tmp_path / "r.toml").write_text(RECIPE.format(url=srv.url), encoding="utf-8")
        proc = dqf_cli("run", "r.toml", cwd=tmp_path, key=KEY)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (f'dqf: error: llm-judge: {srv.url}/chat/completions answered HTTP {status}: '
                                   f'{{"error": "rejected Bearer ***"}} (is $JUDGE_KEY set to a valid key?)')
    assert leaks(tmp_path, proc, KEY) == []
