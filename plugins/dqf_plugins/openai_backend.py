"""`openai` backend: answers from any OpenAI-compatible server (vLLM's, SGLang, TGI, llama.cpp's) through the
completions API, prompts sent as dqf's token ids, requests through the one client dqf has (`dqf.lm.JsonClient`)."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from typing import Literal, Optional

from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

from dqf import Backend, DqfError, PluginOptions
from dqf.lm import (EndpointError, JsonClient, api_key, losses_from_prompt_logprobs,
                    next_token_from_prompt_logprobs)

#: Prompts per ``on_batch`` call: each finished group is cached, so a crash loses at most one group.
GROUP = 64


class OpenaiBackendOptions(PluginOptions):
    base_url: str = Field(description="Server root, e.g. http://127.0.0.1:8000/v1 (POST {base_url}/completions).")
    model: str = Field(description="The model name the server serves the base model under (`--served-model-name`, "
                                   "or the path it was started with).")
    adapter: Literal["load", "served"] = Field(
        default="load", description="How a LoRA adapter reaches the server: `load` posts the adapter's folder to "
                                    "{base_url}/load_lora_adapter (vLLM with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True; "
                                    "the server must see the same files); `served`: the server already serves it "
                                    "under `adapter_name`.")
    adapter_name: Optional[str] = Field(default=None, description="`served`: the name the server serves the "
                                                                  "adapter under; `load`: default dqf-<hash>.")
    api_key_env: Optional[str] = Field(default="OPENAI_API_KEY", description="Environment variable holding the "
                                                                             "key (never printed or recorded).")
    concurrency: PositiveInt = Field(default=16, le=1024, description="Most requests in flight.")
    timeout: PositiveFloat = Field(default=600.0, description="Seconds one request may take, connect to last byte.")
    max_retries: NonNegativeInt = Field(default=5, description="Retries on 429, 5xx, timeouts, broken answers.")
    backoff: NonNegativeFloat = Field(default=1.0, description="First retry delay in seconds (doubles, jittered).")
    max_retry_after: NonNegativeFloat = Field(default=60.0, description="Longest Retry-After wait honoured.")
    prompt_logprobs: bool = Field(default=True, description="The server returns `prompt_logprobs` (vLLM's "
                                                            "extension of the completions API), which answer "
                                                            "losses and next-token probabilities need; false for "
                                                            "servers without it (plugins needing them are refused "
                                                            "at validation).")


class OpenaiBackend(Backend):
    """Greedy completions from a server; a request that fails every retry is a null with its reason."""

    name = "openai"
    Options = OpenaiBackendOptions
    cache_ignore = frozenset({"api_key_env", "concurrency", "timeout", "max_retries", "backoff", "max_retry_after"})

    def __init__(self, options=None):
        super().__init__(options)
        self._client = None
        self._failures: dict[int, str] = {}

    @property
    def capabilities(self):  # what the server can return decides what this backend can do
        return frozenset({"generate", "next_token", "answer_losses"} if self.options.prompt_logprobs else {"generate"})

    def results_identity(self):
        return {"backend": self.name, "base_url": self.options.base_url, "model": self.options.model}

    def check(self):
        o = self.options
        if not o.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {o.base_url!r}")
        if o.adapter == "served" and not o.adapter_name:
            raise ValueError("adapter = 'served' needs adapter_name (the name the server serves the adapter under)")
        try:
            api_key(o.api_key_env)
        except DqfError as exc:
            raise ValueError(str(exc)) from None

    def open(self, model, *, device=None, dtype=None):
        o = self.options
        self._client = JsonClient(o.base_url, key_env=o.api_key_env, timeout=o.timeout, max_retries=o.max_retries,
                                  backoff=o.backoff, max_retry_after=o.max_retry_after, count=self.count)
        self._served = o.model
        if model.adapter is not None:
            self._served = o.adapter_name or "dqf-" + hashlib.blake2b(str(model.adapter).encode(),
                                                                     digest_size=6).hexdigest()
            if o.adapter == "load":
                self._load_adapter(str(model.adapter))

    def _load_adapter(self, path: str) -> None:
        try:
            reply = self._client.post("/load_lora_adapter", {"lora_name": self._served, "lora_path": path})
        except EndpointError as exc:
            text = str(exc)
            if "already been loaded" in text:  # a rerun against the same server
                return
            raise DqfError(f"openai backend: the server would not load the LoRA adapter {path} as {self._served!r} "
                           f"({text}); start vLLM with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True and --enable-lora, or "
                           f"serve the adapter yourself and set adapter = 'served'") from None
        if reply.failed:
            raise DqfError(f"openai backend: loading the LoRA adapter failed: {reply.failure}")

    def _one(self, ids, max_new_tokens: int):
        reply = self._client.post("/completions", {
            "model": self._served, "prompt": list(ids), "max_tokens": max_new_tokens, "temperature": 0.0,
            "n": 1, "skip_special_tokens": True})
        if reply.failure:
            return None, reply.failure
        try:
            return reply.data["choices"][0]["text"].strip(), None
        except (KeyError, IndexError, TypeError, AttributeError):
            return None, f"malformed response: {reply.text[:120]!r}"

    def generate(self, prompts, *, max_new_tokens, num_beams=1, batch_size=None, on_batch=None):
        if num_beams > 1:
            raise DqfError("openai backend: beam search is not part of the completions API; use num_beams = 1, "
                           "or backend 'vllm' / 'transformers'")
        self._failures = {}
        out: list = [None] * len(prompts)
        with ThreadPoolExecutor(max_workers=min(self.options.concurrency, max(len(prompts), 1))) as pool:
            for start in range(0, len(prompts), GROUP):
                pos = list(range(start, min(start + GROUP, len(prompts))))
                answers = list(pool.map(lambda i: self._one(prompts[i], max_new_tokens), pos))
                for i, (text, why) in zip(pos, answers):
                    out[i] = text
                    if why is not None:
                        self._failures[i] = why
                if on_batch is not None:
                    on_batch(pos, [a[0] for a in answers])
        return out

    def _prompt_logprobs(self, sequences) -> list:
        """Per sequence, each token's log-probability given those before it (``None`` for the first), or
        ``None`` for a sequence whose request failed (its reason in :meth:`failures`)."""
        def one(seq):
            reply = self._client.post("/completions", {"model": self._served, "prompt": list(seq), "max_tokens": 1,
                                                       "temperature": 0.0, "prompt_logprobs": 0})
            if reply.failure:
                return None, reply.failure
            try:
                rows = reply.data["choices"][0]["prompt_logprobs"]
                return [None if d is None else d[str(t)]["logprob"] for t, d in zip(seq, rows)], None
            except (KeyError, IndexError, TypeError):
                return None, "the server returned no prompt_logprobs (set prompt_logprobs = false for this server)"

        self._failures = {}
        with ThreadPoolExecutor(max_workers=min(self.options.concurrency, max(len(sequences), 1))) as pool:
            results = list(pool.map(one, sequences))
        out = []
        for k, (lp, why) in enumerate(results):
            out.append(lp)
            if why is not None:
                self._failures[k] = why
        return out

    def answer_losses(self, prompts, answers):
        return losses_from_prompt_logprobs(prompts, answers, self._prompt_logprobs)

    def next_token_logprobs(self, prompts, token_sets):
        return next_token_from_prompt_logprobs(prompts, token_sets, self._prompt_logprobs)

    def failures(self):
        return dict(self._failures)

    def close(self):
        self._client = None
