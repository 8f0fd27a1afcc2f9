"""The one HTTP client dqf talks to model servers with: JSON POSTs under a deadline for the whole request, retries with
backoff and Retry-After, no redirects, and an API key that never reaches an error message, a log or the cache."""

from __future__ import annotations

import json
import math
import os
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlsplit

from dqf.errors import DqfError
from dqf.lm.models import one_line


class EndpointError(DqfError):
    """The endpoint cannot be used: unreachable after every retry, or it refused the request (HTTP 4xx but 429).
    No retry will fix it, so the run stops instead of caching a null per row."""


@dataclass(frozen=True)
class Reply:
    """One request's outcome. ``data`` is the parsed JSON body; else ``failure`` says why there is none.
    ``failed`` marks outcomes that are not the server's answer (retries ran out, a redirect): nothing
    about them should be cached, so a rerun asks again."""

    data: Any = None
    failure: str | None = None
    failed: bool = False
    text: str = ""  # the body as received (for messages about an answer that did not parse)


def api_key(env: str | None) -> str | None:
    """The key in ``$env`` with surrounding whitespace stripped (a key file saved with CRLF), or None when unset.

    A key with a character that cannot go in an HTTP header (a control or non-ASCII character
    inside it) is an error naming the variable and the position, never the key.
    """
    if not env:
        return None
    key = os.environ.get(env, "").strip()
    if not key:
        return None
    for i, ch in enumerate(key):
        if not ("\x21" <= ch <= "\x7e"):
            what = "a control character" if ch < " " or ch == "\x7f" else ("a space" if ch == " " else
                                                                              "a non-ASCII character")
            raise DqfError(f"${env}: the key holds {what} at position {i + 1} of {len(key)}, which cannot be sent "
                           f"in an HTTP header; fix the variable (the key is not printed)")
    return key


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait: its delay-seconds form or an HTTP date; None if unusable."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None or when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)


class _Attempt(Exception):
    """One attempt went wrong in a way a retry may fix; ``kind`` is connect, timeout or broken."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind, self.reason = kind, reason


class JsonClient:
    """POSTs JSON to ``base_url`` + a path and reads a JSON answer, by the rules every dqf HTTP caller shares.

    - ``timeout`` bounds the *whole* request, connect to last byte: a server that trickles its
      answer cannot hold a request longer (a watchdog closes the socket at the deadline).
    - 429, 5xx, timeouts, dropped connections and truncated bodies are retried ``max_retries``
      times with exponential backoff (``backoff`` seconds first, doubling, x0.5-1.5 jitter, at
      most 60 s), or after what a 429/503's Retry-After asks, at most ``max_retry_after``.
    - Redirects are never followed: the key is sent to ``base_url``'s origin only. A 3xx is a
      failed request whose reason names where it pointed.
    - Other 4xx raise :class:`EndpointError`; so does a server never reached in any attempt.
      A request that reached the server but failed every attempt is a failed :class:`Reply`.
    - The key (``$key_env``, see :func:`api_key`) is scrubbed from every message this class makes.
    ``count(name, n)`` receives ``requests``, ``retries`` and ``retry_after_waits``.
    """

    def __init__(self, base_url: str, *, key_env: str | None = None, timeout: float = 60.0, max_retries: int = 5,
                 backoff: float = 1.0, max_retry_after: float = 60.0,
                 count: Callable[[str, int], None] | None = None):
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise DqfError(f"base_url must be an http:// or https:// address, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.key_env = key_env
        self._key = api_key(key_env)
        self.timeout, self.max_retries = timeout, max_retries
        self.backoff, self.max_retry_after = backoff, max_retry_after
        self._count = count or (lambda name, n=1: None)

    def scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def post(self, path: str, payload: dict) -> Reply:
        url = self.base_url + path
        try:
            return self._post(url, json.dumps(payload).encode())
        except EndpointError as exc:
            raise EndpointError(self.scrub(str(exc))) from None
        except DqfError:
            raise
        except Exception as exc:  # anything unforeseen still must not carry the key out
            raise EndpointError(self.scrub(f"request to {url} failed: {type(exc).__name__}: {exc}")) from None

    def _post(self, url: str, body: bytes) -> Reply:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        last, reached, wait = "no attempt", False, None
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            if attempt:
                self._count("retries", 1)
                if wait is not None:
                    self._count("retry_after_waits", 1)
                    delay = min(wait, self.max_retry_after)
                else:
                    delay = min(60.0, self.backoff * 2 ** (attempt - 1)) * (0.5 + random.random())
                time.sleep(delay)
            wait = None
            self._count("requests", 1)
            try:
                status, head, raw = self._once(url, body, headers)
            except _Attempt as exc:
                last = exc.reason
                reached = reached or exc.kind != "connect"
                continue
            reached = True
            text = raw.decode("utf-8", "replace")
            if 300 <= status < 400:
                where = head.get("Location") or "no Location given"
                return Reply(failure=self.scrub(f"redirected (HTTP {status} to {where}); dqf does not follow "
                                                f"redirects, so the key stays with {url}: set base_url to the "
                                                f"final address"), failed=True, text=text)
            if status == 429 or status >= 500:
                last = f"HTTP {status}"
                if status in (429, 503):
                    wait = retry_after_seconds(head.get("Retry-After"))
                continue
            if status >= 400:
                hint = (f" (is ${self.key_env} set to a valid key?)" if status in (401, 403) and self.key_env else "")
                raise EndpointError(f"{url} answered HTTP {status}: {one_line(text, 200)}{hint}")
            try:
                return Reply(data=json.loads(text), text=text)
            except ValueError:
                return Reply(failure=self.scrub(f"malformed response: {one_line(text, 123)!r}"), text=text)
        if not reached:
            raise EndpointError(f"cannot reach {url} after {attempts} attempts ({last})")
        return Reply(failure=self.scrub(f"request failed after {attempts} attempts: {last}"), failed=True)

    def _once(self, url: str, body: bytes, headers: dict) -> tuple[int, Any, bytes]:
        import http.client
        import socket

        conn, target = self._connection(url)
        expired = threading.Event()

        def deadline():  # wakes a read blocked on a trickling server; the read then fails and is reported as a timeout
            expired.set()
            sock = conn.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        watchdog = threading.Timer(self.timeout, deadline)
        watchdog.daemon = True
        timeout = _Attempt("timeout", f"timeout after {self.timeout:g} s")
        status = None
        watchdog.start()
        try:
            try:
                conn.connect()
            except (TimeoutError, socket.timeout):
                raise _Attempt("connect", f"connection error: no answer to connect within {self.timeout:g} s")
            except OSError as exc:
                if expired.is_set():
                    raise timeout
                raise _Attempt("connect", f"connection error: {type(exc).__name__}: {exc.strerror or exc}")
            try:
                conn.request("POST", target, body=body, headers=headers)
                resp = conn.getresponse()
                status = resp.status
                raw = resp.read()
            except http.client.IncompleteRead as exc:
                if expired.is_set():
                    raise timeout
                expected = len(exc.partial) + (exc.expected or 0)
                raise _Attempt("broken", f"response body ended after {len(exc.partial)} of {expected} bytes")
            except (TimeoutError, socket.timeout):
                raise timeout
            except (http.client.HTTPException, OSError) as exc:
                if expired.is_set():
                    raise timeout
                what = "response broken off" if status is not None else "connection dropped before an answer"
                raise _Attempt("broken", f"{what}: {type(exc).__name__}")
            if expired.is_set():
                raise timeout
            return status, resp.headers, raw
        finally:
            watchdog.cancel()
            conn.close()

    def _connection(self, url: str):
        """A connection for ``url`` (through the environment's proxy, as urllib would choose one) and the
        request target to send on it."""
        import http.client
        from urllib.request import getproxies, proxy_bypass

        u = urlsplit(url)
        target = (u.path or "/") + (f"?{u.query}" if u.query else "")
        port = u.port or (443 if u.scheme == "https" else 80)
        proxy = None if proxy_bypass(u.hostname) else getproxies().get(u.scheme)
        cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
        if not proxy:
            return cls(u.hostname, port, timeout=self.timeout), target
        p = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if u.scheme == "https":  # a CONNECT tunnel: the proxy sees no header of ours
            conn = cls(p.hostname, p.port or 80, timeout=self.timeout)
            conn.set_tunnel(u.hostname, port)
            return conn, target
        return http.client.HTTPConnection(p.hostname, p.port or 80, timeout=self.timeout), url
