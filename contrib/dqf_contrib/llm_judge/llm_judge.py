"""`llm-judge` scorer: an LLM rates each (instruction, input, response) for accuracy on 0-5, as AlpaGasus does.

The judge is either a causal LM behind one of dqf's backends (``backend = { plugin = "transformers" | "vllm" |
"openai" }``: the expected score from the digit-token probabilities, or a greedy answer that is parsed; the prompt
is rendered here with the model's chat template, so every backend sees the same tokens), or ``backend = "openai"``:
a hosted chat-completions API (the server's own template; generate mode) through dqf.lm.JsonClient (bounded
concurrency, whole-request timeouts, retries, no redirects, the key never printed).
"""

from __future__ import annotations

import math
import re
import threading
from typing import Literal, Union

from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, field_validator

from dqf import FAILED_COLUMN, DqfError, PluginOptions, PluginSpec, Scorer
from dqf.lm import (EndpointError, JsonClient, ModelMixin, api_key, effective_max_length, one_line,
                    require_capabilities, single_token_ids)

#: AlpaGasus (Chen et al., 2024, "AlpaGasus: Training a Better Alpaca with Fewer Data", Fig. 3): system prompt.
ALPAGASUS_SYSTEM = ("We would like to request your feedback on the performance of AI assistant in response to the "
                    "instruction and the given input displayed following.")
#: AlpaGasus user prompt: the triplet, then the rating request (accuracy dimension).
ALPAGASUS_PROMPT = (
    "Instruction: {instruction}\n"
    "Input: {input}\n"
    "Response: {response}\n\n"
    "Please rate according to the accuracy of the response to the instruction and the input. Each assistant "
    "receives a score on a scale of 0 to 5, where a higher score indicates higher level of the accuracy. Please "
    "first output a single line containing value indicating the scores. In the subsequent line, please provide a "
    "comprehensive explanation of your evaluation, avoiding any potential bias."
)
SCORE_MIN, SCORE_MAX = 0.0, 5.0
DIGITS = ("0", "1", "2", "3", "4", "5")
_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d+)?|\.\d+)")


def parse_score(text: str | None) -> tuple[float | None, str | None]:
    """``(score, None)`` from a judge's answer, or ``(None, reason)`` when it holds no usable score.

    The score is the first number on the first non-empty line (``"Score: 4.5"``, ``"4"``, ``"**4/5**"``); it
    must lie in [0, 5]. Nothing is guessed: no number there, or one outside the scale, gives a null score.
    """
    if text is None:
        return None, "empty answer"
    line = next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")
    if not line:
        return None, "empty answer"
    m = _NUMBER.search(line)
    if m is None:
        return None, f"no number on the first line: {one_line(line, 123)!r}"
    value = float(m.group())
    if not (SCORE_MIN <= value <= SCORE_MAX) or math.isnan(value):
        return None, f"score {m.group()} outside 0-5 on the first line: {one_line(line, 123)!r}"
    return value, None


def fill_prompt(template: str, instruction: str, input_: str, response: str) -> str:
    """Replace the three placeholders only (other braces in a custom prompt stay as written)."""
    return (template.replace("{instruction}", instruction).replace("{input}", input_)
            .replace("{response}", response))


class LlmJudgeOptions(PluginOptions):
    backend: Union[Literal["openai"], PluginSpec] = Field(
        default=PluginSpec(plugin="transformers"),
        description="Where the judge model runs (docs/backends.md): a backend table, `{ plugin = \"transformers\" }` "
                    "(this process; `\"hf\"` is the same), `{ plugin = \"vllm\" }` or `{ plugin = \"openai\", "
                    "base_url = ... }` (a vLLM/SGLang/TGI server fed dqf's tokens); or the string `\"openai\"`: a "
                    "hosted chat-completions API at `base_url` (its own chat template, generate mode).")
    model: str = Field(description="The judge: local folder, .gguf, pkg:NAME or hub id (its tokenizer renders the "
                                   "prompt on every backend); backend \"openai\": the model name sent.")
    prompt: str = Field(default=ALPAGASUS_PROMPT, min_length=1,
                        description="User prompt with {instruction}, {input} and {response} placeholders "
                                    "(default: AlpaGasus's).")
    system: str = Field(default=ALPAGASUS_SYSTEM, description="System prompt (default: AlpaGasus's); '' for none.")
    mode: Literal["expected", "generate"] | None = Field(
        default=None, description="expected (hf only): probability-weighted mean over the digit tokens 0..5 at the "
                                  "first answer position; generate: greedy answer, parsed. Default: expected for "
                                  "hf, generate for openai.")
    max_new_tokens: PositiveInt = Field(default=16, description="Answer tokens generated (generate mode); only the "
                                                                "first line is read.")
    # hf
    device: Literal["auto", "cpu", "cuda", "mps"] = Field(default="auto", description="hf: auto picks cuda, mps, cpu.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(default="auto", description="hf: weights dtype.")
    batch_size: PositiveInt = Field(default=8, description="hf: prompts per forward pass.")
    max_length: PositiveInt = Field(default=2048, description="hf: most prompt tokens; longer prompts lose their "
                                                              "middle (counted in stats).")
    # openai
    base_url: str | None = Field(default=None, description="openai: endpoint root, e.g. https://api.openai.com/v1 "
                                                           "(POST {base_url}/chat/completions).")
    api_key_env: str | None = Field(default="OPENAI_API_KEY",
                                    description="openai: environment variable holding the key (sent as a Bearer "
                                                "header; never recorded). Unset variable: no header is sent.")
    concurrency: PositiveInt = Field(default=4, le=256, description="openai: most requests in flight.")
    timeout: PositiveFloat = Field(default=60.0, description="openai: seconds per request.")
    max_retries: NonNegativeInt = Field(default=5, description="openai: retries on 429, 5xx and timeouts.")
    backoff: NonNegativeFloat = Field(default=1.0, description="openai: first retry delay in seconds; doubles each "
                                                               "retry (x0.5-1.5 jitter, at most 60 s).")
    max_retry_after: NonNegativeFloat = Field(default=60.0, description="openai: a 429 or 503 with a Retry-After "
                                                                        "header waits what it asks, at most this "
                                                                        "many seconds, before the retry.")
    temperature: NonNegativeFloat = Field(default=0.0, description="openai: sampling temperature.")

    @field_validator("backend", mode="before")
    @classmethod
    def _hf_is_transformers(cls, value):
        return {"plugin": "transformers"} if value == "hf" else value  # the name before backends were plugins


class LlmJudgeScorer(ModelMixin, Scorer):
    """AlpaGasus-style rating: ``llm_judge`` (0-5, Float64) and ``llm_judge_reason`` (why the score is null)."""

    name = "llm-judge"
    version = "2"  # 2: a model judge through dqf's backends (generation: dqf's batched greedy loop)
    Options = LlmJudgeOptions
    batch_size = 64  # rows per score() call: each finished batch is cached, so a crash loses little
    cache_ignore = frozenset({"batch_size", "concurrency", "api_key_env", "timeout", "max_retries", "backoff",
                              "max_retry_after"})
    nested_plugins = {"backend": "backend"}  # a backend table (not the string "openai")

    def __init__(self, options=None):
        super().__init__(options)
        self._backend = None
        self._tokenizer = None
        self._config = None
        self._digit_ids = None
        self._lock = threading.Lock()
        self._stats = {"rows_scored": 0, "null_scores": 0}

    @property
    def chat_api(self) -> bool:
        """Whether the judge is a hosted chat-completions API (``backend = "openai"``), not a model dqf prompts."""
        return self.options.backend == "openai"

    @property
    def mode(self) -> str:
        return self.options.mode or ("generate" if self.chat_api else "expected")

    def check(self):
        o = self.options
        if "{instruction}" not in o.prompt or "{response}" not in o.prompt:
            raise ValueError("prompt must contain the {instruction} and {response} placeholders")
        if not self.chat_api and (backend := self.nested.get("backend")) is not None:
            needs = {"next_token"} if self.mode == "expected" else {"generate"}
            try:
                require_capabilities(backend, needs, self.name)
            except DqfError as exc:
                raise ValueError(f"{exc}; use mode = 'generate'" if self.mode == "expected" else str(exc)) from None
        if self.chat_api:
            if not o.base_url:
                raise ValueError("backend 'openai' needs base_url (e.g. 'https://api.openai.com/v1')")
            if not o.base_url.startswith(("http://", "https://")):
                raise ValueError(f"base_url must start with http:// or https://, got {o.base_url!r}")
            if o.mode == "expected":
                raise ValueError("mode 'expected' needs token probabilities: use backend 'hf', or mode 'generate'")
            try:
                api_key(o.api_key_env)  # a key no header can carry fails here, at validation, not mid-run
            except DqfError as exc:
                raise ValueError(str(exc)) from None
        elif o.base_url:
            raise ValueError("base_url is an option of backend 'openai' (a backend table has its own base_url)")

    def columns(self):
        import polars as pl

        return {"llm_judge": pl.Float64, "llm_judge_reason": pl.String}

    def count(self, key: str, n: int = 1):
        with self._lock:  # openai requests finish on several threads
            self._stats[key] = self._stats.get(key, 0) + n

    # -- identity --------------------------------------------------------------------------

    def identity(self):
        if self.chat_api:  # base_url, model, prompt, system, mode are options (in the key)
            return {"mode": self.mode}
        return {**self.identity_on(self.nested.get("backend")), "mode": self.mode}

    # -- scoring ---------------------------------------------------------------------------
    def setup(self):
        self.check()
        if not self.chat_api and self._backend is None:
            self._open()

    def close(self):
        backend, self._backend = self._backend, None
        if backend is not None:
            backend.close()

    def _prompts(self, batch) -> list[str]:
        return [fill_prompt(self.options.prompt, ins or "", inp or "", out or "")
                for ins, inp, out in zip(batch["instruction"], batch["input"], batch["output"])]

    def score(self, batch):
        import polars as pl

        if batch.height == 0:
            return pl.DataFrame(schema=self.columns())
        prompts = self._prompts(batch)
        failed = None
        if self.chat_api:
            results = self._score_openai(prompts)
        else:
            self.setup()
            results = self._score_model(prompts)
        failed = [f for _, _, f in results]
        results = [(s, r) for s, r, _ in results]
        self.count("rows_scored", len(results))
        self.count("null_scores", sum(1 for s, _ in results if s is None))
        out = pl.DataFrame({"llm_judge": [s for s, _ in results], "llm_judge_reason": [r for _, r in results]},
                           schema=self.columns())
        if any(failed):  # requests that ran out of retries: not cached, so a rerun asks again
            out = out.with_columns(pl.Series(FAILED_COLUMN, failed, dtype=pl.Boolean))
        return out

    # -- a model behind a dqf backend ---------------------------------------------------------
    def _open(self):
        backend = self.nested_plugin("backend")  # built by the recipe loader (or dqf.testing.build_plugin)
        tok, config = self.open_backend(backend)
        try:
            ids = single_token_ids(tok, DIGITS) if self.mode == "expected" else None
        except DqfError as exc:
            backend.close()
            raise DqfError(f"{self.name}: {exc} (the tokenizer of {self.options.model!r}); use mode = 'generate'"
                           ) from None
        self._backend, self._tokenizer, self._config, self._digit_ids = backend, tok, config, ids
        self._stats.update(truncated_rows=0, backend=backend.name)

    def encode_prompt(self, user: str) -> list[int]:
        """Token ids of the judge's input: the chat template (system + user, generation prompt) when the tokenizer
        has one, else ``system + "\\n\\n" + user + "\\n"`` with the tokenizer's special tokens."""
        tok, system = self._tokenizer, self.options.system
        if getattr(tok, "chat_template", None):
            messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
            text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return list(tok(text, add_special_tokens=False)["input_ids"])
        text = f"{system}\n\n{user}\n" if system else f"{user}\n"
        return list(tok(text, add_special_tokens=True)["input_ids"])

    def _limit(self) -> int:
        reserve = self.options.max_new_tokens if self.mode == "generate" else 0
        return max(effective_max_length(self.options.max_length, self._config, reserve=reserve), 2)

    def _score_model(self, prompts):
        """``(score, reason, failed)`` per prompt from the backend: the expected digit, or the parsed answer."""
        import numpy as np

        limit = self._limit()
        encoded = []
        for p in prompts:
            ids = self.encode_prompt(p)
            if len(ids) > limit:  # keep the head (system, instruction) and the tail (the rating request)
                self.count("truncated_rows")
                head = limit // 2
                ids = ids[:head] + ids[len(ids) - (limit - head):]
            encoded.append(ids)
        backend = self._backend
        if self.mode == "expected":
            lp = backend.next_token_logprobs(encoded, [[t] for t in self._digit_ids])
            failures = backend.failures()
            # the digits' probabilities renormalised among themselves, then their mean
            probs = np.exp(lp - lp.max(axis=1, keepdims=True))
            values = (probs / probs.sum(axis=1, keepdims=True)) @ np.arange(len(DIGITS), dtype=np.float64)
            out = [(float(v), None, False) if np.isfinite(v) else (None, "no digit probabilities", False)
                   for v in values]
        else:
            texts = backend.generate(encoded, max_new_tokens=self.options.max_new_tokens,
                                     batch_size=self.options.batch_size)
            failures = backend.failures()
            out = [(*parse_score(t), False) for t in texts]
        for i, why in failures.items():  # the backend could not answer: null now, asked again next run
            out[i] = (None, why, True)
        return out

    # -- openai backend --------------------------------------------------------------------
    def _score_openai(self, prompts):
        """``(score, reason, failed)`` per prompt from the chat-completions API."""
        from concurrent.futures import ThreadPoolExecutor

        o = self.options
        client = JsonClient(o.base_url, key_env=o.api_key_env, timeout=o.timeout, max_retries=o.max_retries,
                            backoff=o.backoff, max_retry_after=o.max_retry_after, count=self.count)
        with ThreadPoolExecutor(max_workers=min(o.concurrency, len(prompts))) as pool:
            futures = [pool.submit(self._judge_http, client, p) for p in prompts]
            results, fatal = [], None
            for f in futures:
                try:
                    results.append(f.result())
                except EndpointError as exc:
                    fatal = fatal or str(exc)
                    results.append((None, None, True))
        if fatal:
            raise DqfError(f"{self.name}: {fatal}")
        return results

    def _judge_http(self, client: JsonClient, user: str):
        """``(score, reason, failed)``: ``failed`` when the server gave no answer (a rerun should ask again)."""
        o = self.options
        messages = ([{"role": "system", "content": o.system}] if o.system else []) + [{"role": "user", "content": user}]
        reply = client.post("/chat/completions", {"model": o.model, "messages": messages,
                                                  "temperature": o.temperature, "max_tokens": o.max_new_tokens})
        if reply.failed:
            with self._lock:  # how many rows failed, and why (recorded in the manifest's step stats)
                self._stats["failed_rows"] = self._stats.get("failed_rows", 0) + 1
                reasons = self._stats.setdefault("failure_reasons", {})
                why = reply.failure.removeprefix(f"request failed after {o.max_retries + 1} attempts: ")
                reasons[why] = reasons.get(why, 0) + 1
            return None, reply.failure, True
        if reply.failure:
            return None, reply.failure, False
        try:
            content = reply.data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            return None, client.scrub(f"malformed response: {one_line(reply.text, 123)!r}"), False
        score, reason = parse_score(content)
        return score, (client.scrub(reason) if reason else None), False
