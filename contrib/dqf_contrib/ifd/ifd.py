"""`ifd` scorer: Instruction-Following Difficulty, loss(answer | instruction) / loss(answer alone)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from dqf.lm import CausalLMOptions, CausalLMScorer, alpaca_prompt, encode, plain_prompt

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

    counters = ("rows_scored", "too_long_rows", "ifd_ge_1_rows", "null_rows")

    def columns(self):
        import polars as pl

        return {"ifd": pl.Float64, "ifd_cond_loss": pl.Float64, "ifd_direct_loss": pl.Float64,
                "ifd_too_long": pl.Boolean, "ifd_ge_1": pl.Boolean}

    def prompts_for(self, instruction: str, input_: str) -> tuple[str, str | None]:
        """(conditioned prompt text, answer-only prefix text or None for no prefix at all)."""
        if self.options.variant == "cherry":
            return alpaca_prompt(instruction, input_), CHERRY_DIRECT_PREFIX
        return plain_prompt(instruction, input_), None

    def encode_row(self, instruction: str, input_: str, output: str):
        """(conditioned prompt ids, direct prompt ids, answer ids, too long) of one row."""
        tok = self.tokenizer
        cond_text, direct_text = self.prompts_for(instruction, input_)
        cond = encode(tok, cond_text, special=True)
        # no prefix: only what the tokenizer itself puts before any text (a BOS for Llama, nothing for GPT-2)
        direct = encode(tok, direct_text if direct_text is not None else "", special=True)
        answer = encode(tok, output, special=False)
        too_long = len(cond) + len(answer) > self.max_length
        if too_long:
            answer = answer[:max(self.max_length - len(cond), 0)]
        return cond, direct, answer, too_long

    def score_batch(self, batch):
        import numpy as np
        import polars as pl

        conds, directs, answers, flags = [], [], [], []
        for ins, inp, out in zip(batch["instruction"], batch["input"], batch["output"]):
            c, d, a, f = self.encode_row(ins or "", inp or "", out or "")
            conds.append(c)
            directs.append(d)
            answers.append(a)
            flags.append(f)
        n = batch.height
        losses = self.losses(conds + directs, answers + answers)  # both passes share the length sort
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
        self.count("too_long_rows", sum(flags))
        self.count("ifd_ge_1_rows", int(frame["ifd_ge_1"].sum() or 0))
        self.count("null_rows", int(frame["ifd"].null_count()))
        return frame
