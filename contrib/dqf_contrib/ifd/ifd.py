"""`ifd` scorer: Instruction-Following Difficulty, loss(answer | instruction) / loss(answer alone)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..perplexity.perplexity import CausalLMOptions, CausalLMScorer, alpaca_prompt, encode, plain_prompt

#: What Cherry LLM's answer-only pass is conditioned on.
CHERRY_DIRECT_PREFIX = "### Response:"


class IfdOptions(CausalLMOptions):
    variant: Literal["cherry", "superfiltering"] = Field(
        default="cherry",
        description="cherry (Li et al. 2023): ratio of mean answer losses, Alpaca prompt, answer-only pass after "
                    "'### Response:'. superfiltering (Li et al. 2024): ratio of perplexities, prompt "
                    "'{instruction}\\n{input}\\n', answer-only pass with no prefix; meant for a small model "
                    "such as GPT-2.")


class IfdScorer(CausalLMScorer):
    """IFD = answer loss given the instruction / answer loss on its own; two forward passes per row, no generation.

    Prompt and answer are tokenized separately and concatenated (the prompt with the
    tokenizer's special tokens, e.g. a BOS; the answer without). A row whose prompt + answer
    exceeds ``max_length`` is flagged ``ifd_too_long`` and its answer is cut from the right to
    fit; both passes then score the same surviving answer tokens. If the prompt alone fills
    ``max_length``, the row's numbers are null.
    """

    name = "ifd"
    version = "1"
    Options = IfdOptions

    def __init__(self, options=None):
        super().__init__(options)
        self._ge_1 = 0
        self._null = 0

    def columns(self):
        import polars as pl

        return {"ifd": pl.Float64, "ifd_cond_loss": pl.Float64, "ifd_direct_loss": pl.Float64,
                "ifd_too_long": pl.Boolean, "ifd_ge_1": pl.Boolean}

    def stats(self):
        if self._max_length is None:
            return {}
        return {"rows_scored": self._scored, "too_long_rows": self._truncated, "ifd_ge_1_rows": self._ge_1,
                "null_rows": self._null, "max_length": self._max_length}

    def prompts_for(self, instruction: str, input_: str) -> tuple[str, str | None]:
        """(conditioned prompt text, answer-only prefix text or None for no prefix at all)."""
        if self.options.variant == "cherry":
            return alpaca_prompt(instruction, input_), CHERRY_DIRECT_PREFIX
        return plain_prompt(instruction, input_), None

    def encode_row(self, instruction: str, input_: str, output: str):
        """(conditioned prompt ids, direct prompt ids, answer ids, too long) of one row."""
        tok = self._tokenizer
        cond_text, direct_text = self.prompts_for(instruction, input_)
        cond = encode(tok, cond_text, special=True)
        # no prefix: only what the tokenizer itself puts before any text (a BOS for Llama, nothing for GPT-2)
        direct = encode(tok, direct_text if direct_text is not None else "", special=True)
        answer = encode(tok, output, special=False)
        too_long = len(cond) + len(answer) > self._max_length
        if too_long:
            answer = answer[:max(self._max_length - len(cond), 0)]
        return cond, direct, answer, too_long

    def score(self, batch):
        import numpy as np
        import polars as pl

        if self._model is None:
            self.setup()
        if batch.height == 0:
            return pl.DataFrame(schema=self.columns())
        conds, directs, answers, flags = [], [], [], []
        for ins, inp, out in zip(batch["instruction"], batch["input"], batch["output"]):
            c, d, a, f = self.encode_row(ins or "", inp or "", out or "")
            conds.append(c)
            directs.append(d)
            answers.append(a)
            flags.append(f)
        n = batch.height
        losses = self._losses(conds + directs, answers + answers)  # both passes share the length sort
        cond, direct = losses[:n], losses[n:]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            if self.options.variant == "cherry":
                ifd = cond / direct
            else:
                ifd = np.exp(cond) / np.exp(direct)
        ifd[~np.isfinite(ifd)] = np.nan
        frame = pl.DataFrame({"ifd": ifd, "ifd_cond_loss": cond, "ifd_direct_loss": direct},
                             schema={"ifd": pl.Float64, "ifd_cond_loss": pl.Float64, "ifd_direct_loss": pl.Float64})
        frame = frame.fill_nan(None).with_columns(ifd_too_long=pl.Series(flags, dtype=pl.Boolean),
                                                  ifd_ge_1=pl.col("ifd") >= 1.0)
        self._scored += n
        self._truncated += sum(flags)
        self._ge_1 += int(frame["ifd_ge_1"].sum() or 0)
        self._null += int(frame["ifd"].null_count())
        return frame
