"""`perplexity` scorer: mean negative log-likelihood of the answer given the prompt under a causal LM."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from dqf import DqfError
from dqf.lm import (CausalLMOptions, CausalLMScorer, alpaca_prompt, chat_answer, chat_prompt, encode, encode_pair,
                    plain_prompt)


class PerplexityOptions(CausalLMOptions):
    template: Literal["alpaca", "chat", "plain"] = Field(
        default="alpaca", description="Prompt before the answer: alpaca (Stanford Alpaca prompt), chat (the "
                                      "tokenizer's chat template), plain ('{instruction}\\n{input}\\n').")
    column_prefix: str = Field(default="ppl", min_length=1,
                               description="Columns are <prefix>_nll and <prefix>.")
    truncation: Literal["end", "prompt_start"] = Field(default="end", description=(
        "A row longer than max_length: end (as the references' tokenizer truncation: the end of the answer "
        "goes, the prompt stays) or prompt_start (the whole answer stays, the start of the prompt goes; dqf "
        "before version 2)."))


class PerplexityScorer(CausalLMScorer):
    """Mean NLL of the answer tokens given the prompt (``<prefix>_nll``) and perplexity = exp(mean NLL).

    With the alpaca and plain templates, prompt and answer are tokenized as one string (as the
    references do). A row longer than ``max_length`` loses the end of its answer (``truncation =
    "end"``, the references'), or keeps its whole answer and loses the start of its prompt
    (``"prompt_start"``; an answer longer than ``max_length`` on its own then keeps its first
    ``max_length`` tokens and no prompt). Such rows are counted in ``stats()["truncated_rows"]``.
    """

    name = "perplexity"
    version = "2"  # 2: one-string tokenization; truncation "end" by default
    Options = PerplexityOptions

    def columns(self):
        import polars as pl

        p = self.options.column_prefix
        return {f"{p}_nll": pl.Float64, p: pl.Float64}

    def encode_row(self, instruction: str, input_: str, output: str) -> tuple[list[int], list[int]]:
        """(prompt ids, answer ids) of one row, before truncation."""
        tok, template = self.tokenizer, self.options.template
        if template == "chat":
            where = {"option": "template", "instead": "'alpaca' or 'plain'"}
            try:
                prompt = chat_prompt(tok, instruction, input_, **where)
            except DqfError as exc:
                raise DqfError(f"perplexity: {exc}") from None
            rest = chat_answer(tok, instruction, input_, output, **where)
            # the template writes its own special tokens; what follows the prompt includes the end-of-turn marker
            return encode(tok, prompt, special=False), encode(tok, output if rest is None else rest, special=False)
        text = alpaca_prompt(instruction, input_) if template == "alpaca" else plain_prompt(instruction, input_)
        return encode_pair(tok, text, output)

    def score_batch(self, batch):
        import numpy as np
        import polars as pl

        p = self.options.column_prefix
        prompts, answers = [], []
        limit = self.max_length
        for ins, inp, out in zip(batch["instruction"], batch["input"], batch["output"]):
            prompt, answer = self.encode_row(ins or "", inp or "", out or "")
            if len(prompt) + len(answer) > limit:
                self.count("truncated_rows")
                if self.options.truncation == "end":
                    prompt = prompt[:limit]
                    answer = answer[:limit - len(prompt)]
                else:
                    answer = answer[:limit]
                    keep = limit - len(answer)
                    prompt = prompt[len(prompt) - keep:] if keep else []
            prompts.append(prompt)
            answers.append(answer)
        nll = self.losses(prompts, answers)
        with np.errstate(over="ignore"):
            ppl = np.exp(nll)
        frame = pl.DataFrame({f"{p}_nll": nll, p: ppl}, schema=self.columns())
        return frame.fill_nan(None)
