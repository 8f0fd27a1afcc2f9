"""dqf.lm.JsonClient against real servers on 127.0.0.1: keys, redirects, truncated bodies and trickling servers."""

from __future__ import annotations

import json
import time

import pytest

from dqf import DqfError
from dqf.lm import EndpointError, JsonClient, api_key
from http_servers import RawServer, chat, free_port, response, trickle

KEY = "sk-test-0123456789abcdef"


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


def client(url, **kw):
    return JsonClient(url, **{"key_env": "DQF_TEST_KEY", "timeout": 2.0, "max_retries": 1, "backoff": 0.01, **kw})


def test_a_key_read_with_its_line_ending_is_stripped_and_sent_exactly(monkeypatch):
    monkeypatch.setenv("DQF_TEST_KEY", f"  {KEY}\r\n")
    with RawServer(lambda path, headers, body: chat("4")) as srv:
        reply = client(srv.url).post("/chat/completions", {"x": 1})
    assert reply.data["choices"][0]["message"]["content"] == "4" and not reply.failed
    assert srv.requests[0][1]["authorization"] == f"Bearer {KEY}"
    assert json.loads(srv.requests[0][2]) == {"x": 1}


@pytest.mark.parametrize("bad, what, pos", [(KEY[:6] + "\r" + KEY[6:], "a control character", 7),
                                            (KEY[:6] + "\x1b" + KEY[6:], "a control character", 7),
                                            (KEY[:3] + " " + KEY[3:], "a space", 4),
                                            (KEY[:5] + "é" + KEY[5:], "a non-ASCII character", 6)])
def test_a_key_with_a_character_no_header_can_hold_is_an_error_that_does_not_print_it(monkeypatch, bad, what, pos):
    monkeypatch.setenv("DQF_TEST_KEY", bad)
    with pytest.raises(DqfError) as err:
        api_key("DQF_TEST_KEY")
    assert str(err.value) == (f"$DQF_TEST_KEY: the key holds {what} at position {pos} of {len(bad)}, which cannot be "
                              f"sent in an HTTP header; fix the variable (the key is not printed)")
    assert KEY[:6] not in str(err.value) and KEY[8:] not in str(err.value)


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_a_redirect_is_a_failed_request_and_the_key_never_goes_to_the_other_host(monkeypatch, code):
    monkeypatch.setenv("DQF_TEST_KEY", KEY)
    with RawServer(lambda path, headers, body: chat("3")) as other:
        target = f"http://localhost:{other.port}/"
        with RawServer(lambda path, headers, body: response(code, b"", headers={"Location": target})) as srv:
            reply = client(srv.url).post("/chat/completions", {"x": 1})
    assert reply.failed and reply.data is None
    assert reply.failure == (f"redirected (HTTP {code} to {target}); dqf does not follow redirects, so the key stays "
                             f"with {srv.url}/chat/completions: set base_url to the final address")
    assert other.requests == [] and len(srv.requests) == 1  # not followed, not retried


def test_a_body_shorter_than_its_content_length_fails_that_request_not_the_endpoint(monkeypatch):
    monkeypatch.setenv("DQF_TEST_KEY", KEY)
    with RawServer(lambda path, headers, body: response(200, b'{"choices":', length=100)) as srv:
        reply = client(srv.url, max_retries=2).post("/chat/completions", {"x": 1})
    assert reply.failed and reply.failure == "request failed after 3 attempts: response body ended after 11 of 100 bytes"
    assert len(srv.requests) == 3  # retried like any transient failure, then given up on for this row only


def test_timeout_bounds_the_whole_request_against_a_server_that_trickles(monkeypatch):
    monkeypatch.setenv("DQF_TEST_KEY", KEY)
    # every read gets a byte within 0.1 s, so a per-read timeout never fires; the whole answer would take ~10 s
    with RawServer(lambda path, headers, body: trickle(chat("5"), 0.1)) as srv:
        t = time.perf_counter()
        reply = client(srv.url, timeout=1.0, max_retries=0).post("/chat/completions", {"x": 1})
        elapsed = time.perf_counter() - t
    assert reply.failed and reply.failure == "request failed after 1 attempts: timeout after 1 s"
    assert 0.9 < elapsed < 1.8


def test_a_server_never_reached_is_an_endpoint_error(monkeypatch):
    monkeypatch.setenv("DQF_TEST_KEY", KEY)
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(EndpointError) as err:
        client(url).post("/chat/completions", {"x": 1})
    assert str(err.value).startswith(f"cannot reach {url}/chat/completions after 2 attempts (connection error: ")


def test_a_refusal_names_the_status_and_scrubs_a_key_the_server_echoes(monkeypatch):
    monkeypatch.setenv("DQF_TEST_KEY", KEY)
    echo = lambda path, headers, body: response(401, {"error": f"bad key {headers['authorization']}"})
    with RawServer(echo) as srv:
        with pytest.raises(EndpointError) as err:
            client(srv.url).post("/chat/completions", {"x": 1})
    assert str(err.value) == (f'{srv.url}/chat/completions answered HTTP 401: {{"error": "bad key Bearer ***"}} '
                              f"(is $DQF_TEST_KEY set to a valid key?)")


def test_base_url_must_be_http():
    with pytest.raises(DqfError, match="base_url must be an http:// or https:// address, got 'file:///etc/passwd'"):
        JsonClient("file:///etc/passwd")
