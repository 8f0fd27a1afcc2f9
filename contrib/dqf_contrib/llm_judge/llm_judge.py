"""`llm-judge` scorer: an LLM rates each (instruction, input, response) for accuracy on 0-5, as AlpaGasus does.

Two backends: ``hf`` runs a local causal LM (expected score from the digit-token probabilities, or
greedy generation that is parsed); ``openai`` calls any OpenAI-compatible chat-completions endpoint
through dqf.lm.JsonClient (bounded concurrency, whole-request timeouts, retries, no redirects, the key never printed).
"""

from __future__ import annotations

import math
import re
import threading
from typing import Literal

from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

from dqf import FAILED_COLUMN, DqfError, PluginOptions, Scorer
from dqf.lm import (EndpointError, JsonClient, api_key, ModelMixin, collate, effective_max_length, forward_mode, length_batches,
                    one_line, pad_token_id, single_token_ids)

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
    backend: Literal["hf", "openai"] = Field(default="hf", description="hf: a local causal LM; openai: an "
                                                                       "OpenAI-compatible HTTP endpoint.")
    model: str = Field(description="hf: local folder, .gguf, pkg:NAME or hub id; openai: the model name sent.")
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


class LlmJudgeScorer(ModelMixin, Scorer):
    """AlpaGasus-style rating: ``llm_judge`` (0-5, Float64) and ``llm_judge_reason`` (why the score is null)."""

    name = "llm-judge"
    version = "1"
    Options = LlmJudgeOptions
    batch_size = 64  # rows per score() call: each finished batch is cached, so a crash loses little
    cache_ignore = frozenset({"batch_size", "concurrency", "api_key_env", "timeout", "max_retries", "backoff",
                              "max_retry_after"})

    def __init__(self, options=None):
        super().__init__(options)
        self._model = None
        self._tokenizer = None
        self._digit_ids = None
        self._lock = threading.Lock()
        self._stats = {"rows_scored": 0, "null_scores": 0}

    @property
    def mode(self) -> str:
        return self.options.mode or ("expected" if self.options.backend == "hf" else "generate")

    def check(self):
        o = self.options
        if "{instruction}" not in o.prompt or "{response}" not in o.prompt:
            raise ValueError("prompt must contain the {instruction} and {response} placeholders")
        if o.backend == "openai":
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
            raise ValueError("base_url is an option of backend 'openai'")

    def columns(self):
        import polars as pl

        return {"llm_judge": pl.Float64, "llm_judge_reason": pl.String}

    def count(self, key: str, n: int = 1):
        with self._lock:  # openai requests finish on several threads
            self._stats[key] = self._stats.get(key, 0) + n

    # -- identity --------------------------------------------------------------------------

    def identity(self):
        if self.options.backend == "openai":  # base_url, model, prompt, system, mode are options (in the key)
            return {"mode": self.mode}
        return {**self.model_identity(), "mode": self.mode}

    # -- scoring ---------------------------------------------------------------------------
    def setup(self):
        self.check()
        if self.options.backend == "hf" and self._model is None:
            self._setup_hf()

    def _prompts(self, batch) -> list[str]:
        return [fill_prompt(self.options.prompt, ins or "", inp or "", out or "")
                for ins, inp, out in zip(batch["instruction"], batch["input"], batch["output"])]

    def score(self, batch):
        import polars as pl

        if batch.height == 0:
            return pl.DataFrame(schema=self.columns())
        prompts = self._prompts(batch)
        failed = None
        if self.options.backend == "openai":
            results = self._score_openai(prompts)
            failed = [f for _, _, f in results]
            results = [(s, r) for s, r, _ in results]
        else:
            if self._model is None:
                self.setup()
            results = self._score_hf(prompts)
        self.count("rows_scored", len(results))
        self.count("null_scores", sum(1 for s, _ in results if s is None))
        out = pl.DataFrame({"llm_judge": [s for s, _ in results], "llm_judge_reason": [r for _, r in results]},
                           schema=self.columns())
        if failed is not None:  # requests that ran out of retries: not cached, so a rerun asks again
            out = out.with_columns(pl.Series(FAILED_COLUMN, failed, dtype=pl.Boolean))
        return out

    # -- hf backend ------------------------------------------------------------------------
    def _setup_hf(self):
        tok, model = self.load_pretrained("AutoModelForCausalLM")
        try:
            ids = single_token_ids(tok, DIGITS)
        except DqfError as exc:
            raise DqfError(f"{self.name}: {exc} (the tokenizer of {self.options.model!r}); use mode = 'generate'"
                           ) from None
        self._tokenizer, self._model, self._digit_ids = tok, model, ids
        self._stats.update(truncated_rows=0)

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
        return max(effective_max_length(self.options.max_length, self._model.config, reserve=reserve), 2)

    def _score_hf(self, prompts):
        import torch

        limit = self._limit()
        encoded = []
        for p in prompts:
            ids = self.encode_prompt(p)
            if len(ids) > limit:  # keep the head (system, instruction) and the tail (the rating request)
                self.count("truncated_rows")
                head = limit // 2
                ids = ids[:head] + ids[len(ids) - (limit - head):]
            encoded.append(ids)
        tok, model = self._tokenizer, self._model
        device = self.placement()[0]
        pad = pad_token_id(tok)
        out: list = [None] * len(prompts)
        for group in length_batches([len(e) for e in encoded], self.options.batch_size, descending=True):
            batch = collate([{"input_ids": encoded[i]} for i in group], pad, side="left")
            ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            with forward_mode(device):
                if self.mode == "expected":
                    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
                    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits[:, -1, :]
                    probs = torch.softmax(logits[:, self._digit_ids].float(), dim=-1)
                    values = (probs * torch.arange(len(DIGITS), dtype=torch.float32, device=probs.device)).sum(-1)
                    for i, v in zip(group, values.tolist()):
                        out[i] = (float(v), None)
                else:
                    gen = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                         max_new_tokens=self.options.max_new_tokens, pad_token_id=pad)
                    texts = tok.batch_decode(gen[:, ids.shape[1]:], skip_special_tokens=True)
                    for i, t in zip(group, texts):
                        out[i] = parse_score(t)
        return out

    # -- openai backend --------------------------------------------------------------------
    def _score_openai(self, prompts):
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
