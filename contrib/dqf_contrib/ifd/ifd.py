"""`ifd` scorer: Instruction-Following Difficulty, loss(answer | instruction) / loss(answer alone)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, PositiveInt

from dqf.lm import CausalLMOptions, CausalLMScorer, alpaca_prompt, effective_max_length, encode_pair, plain_prompt

#: What Cherry LLM's answer-only pass is conditioned on.
CHERRY_DIRECT_PREFIX = "### Response:"
#: The references' sequence limits (Cherry_LLM cherry_seletion/data_analysis.py; Superfiltering code_ifd/).
REFERENCE_MAX_LENGTH = {"cherry": 512, "superfiltering": 1024}
#: Cherry's answer-only pass may be at most L - P - 2 tokens (P: the prompt's tokens); it skips a row whose
#: answer-only pass would be this short or shorter.
CHERRY_DIRECT_SLACK, CHERRY_MIN_DIRECT = 2, 4


class IfdOptions(CausalLMOptions):
    variant: Literal["cherry", "superfiltering"] = Field(
        default="cherry",
        description="cherry (Li et al. 2023): ratio of mean answer losses, Alpaca prompt, answer-only pass after "
                    "'### Response:'. superfiltering (Li et al. 2024): ratio of perplexities, prompt "
                    "'{instruction}\\n{input}\\n', answer-only pass with no prefix; meant for a small model "
                    "such as GPT-2.")
    max_length: Optional[PositiveInt] = Field(default=None, description=(
        "L, the most tokens of the prompt + answer sequence (also capped by the model). Default: the "
        "reference's, 512 for cherry, 1024 for superfiltering."))
    truncation: Literal["reference", "same_tokens"] = Field(default="reference", description=(
        "reference: as the papers' code: the conditioned pass is cut at L; the answer-only pass at L - P - 2 "
        "tokens (cherry; P = the prompt's tokens) or L - P + 1 (superfiltering), and long rows are kept; cherry "
        "gives null where that leaves 4 tokens or fewer. same_tokens: both passes score the same answer "
        "tokens, those that fit after the prompt (dqf before version 2)."))


class IfdScorer(CausalLMScorer):
    """IFD = answer loss given the instruction / answer loss on its own; two forward passes per row, no generation.

    Each pass's text (the prompt or answer-only prefix, then the answer) is tokenized as one string,
    as the references do, and the answer span found from the tokenizer's offsets
    (:func:`dqf.lm.encode_pair`). Long rows are cut as ``truncation`` says; a row whose prompt +
    answer exceeds L is flagged ``ifd_too_long``. If no answer token survives, the row's numbers
    are null.
    """

    name = "ifd"
    version = "2"  # 2: one-string tokenization, the references' truncation and max_length
    Options = IfdOptions

    def effective_max_length(self, tokenizer, config) -> int:
        o = self.options
        return effective_max_length(o.max_length or REFERENCE_MAX_LENGTH[o.variant], config)

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
        """(conditioned prefix ids, conditioned answer ids, answer-only prefix ids, answer-only answer ids, too long)
        of one row, cut as ``truncation`` says."""
        tok, limit, variant = self.tokenizer, self.max_length, self.options.variant
        cond_text, direct_text = self.prompts_for(instruction, input_)
        cp, ca = encode_pair(tok, cond_text, output)
        # no prefix: only what the tokenizer itself puts before any text (a BOS for Llama, nothing for GPT-2)
        dp, da = encode_pair(tok, direct_text or "", output)
        too_long = len(cp) + len(ca) > limit
        cp = cp[:limit]
        ca = ca[:max(limit - len(cp), 0)]
        if self.options.truncation == "same_tokens":
            return cp, ca, dp, da[:len(ca)], too_long
        prompt_len = len(cp)
        budget = limit - prompt_len - CHERRY_DIRECT_SLACK if variant == "cherry" else limit - prompt_len + 1
        if variant == "cherry" and budget <= CHERRY_MIN_DIRECT:
            return cp, [], dp, [], too_long  # the reference skips the row
        return cp, ca, dp, da[:max(budget - len(dp), 0)], too_long

    def score_batch(self, batch):
        import numpy as np
        import polars as pl

        prompts, answers, d_prompts, d_answers, flags = [], [], [], [], []
        for ins, inp, out in zip(batch["instruction"], batch["input"], batch["output"]):
            cp, ca, dp, da, f = self.encode_row(ins or "", inp or "", out or "")
            prompts.append(cp)
            answers.append(ca)
            d_prompts.append(dp)
            d_answers.append(da)
            flags.append(f)
        n = batch.height
        losses = self.losses(prompts + d_prompts, answers + d_answers)  # both passes share the length sort
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
