"""`deita-complexity` scorer: DEITA's instruction complexity score (Liu et al. 2024, "What Makes Good Data for Alignment?")."""

from __future__ import annotations

from pydantic import Field

from ._base import DeitaOptions, DeitaScorer

#: DEITA's complexity prompt, as its scorer models were trained on it (hkust-nlp/deita, selection/scorer): note the
#: two spaces after the query.
COMPLEXITY_PROMPT = ("You are a helpful assistant. Please identify the complexity score of the following user query. "
                     "\n##Query: {instruction}  \n##Complexity: ")


class DeitaComplexityOptions(DeitaOptions):
    model: str = Field(default="hkust-nlp/deita-complexity-scorer",
                       description="The DEITA complexity scorer (a Llama fine-tune), or any causal LM: a local "
                                   "folder, a .gguf file, pkg:NAME or a Hugging Face hub id.")
    prompt: str = Field(default=COMPLEXITY_PROMPT, description="Prompt with an {instruction} placeholder.")


class DeitaComplexityScorer(DeitaScorer):
    """Expected complexity in [1, 6] of each user query of the row (instruction + input for an alpaca row)."""

    name = "deita-complexity"
    version = "3"  # 3: the reference prompt (two spaces after the query)
    Options = DeitaComplexityOptions
    default_column = "deita_complexity"

    def prompt_ids(self, query, response):
        return self.fit(self.options.prompt, {"instruction": query}, ("instruction",))
