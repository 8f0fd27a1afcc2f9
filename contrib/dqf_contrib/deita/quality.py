"""`deita-quality` scorer: DEITA's response quality score (Liu et al. 2024, "What Makes Good Data for Alignment?")."""

from __future__ import annotations

from pydantic import Field

from ._base import DeitaOptions, DeitaScorer

QUALITY_PROMPT = ("You are a helpful assistant. Please identify the quality score of the Response corresponding to "
                  "the Question. \n #Question#:\n{instruction}\n#Response#:\n{output} \n##Quality: ")


class DeitaQualityOptions(DeitaOptions):
    model: str = Field(default="hkust-nlp/deita-quality-scorer",
                       description="The DEITA quality scorer (a Llama fine-tune), or any causal LM: a local folder, "
                                   "a .gguf file, pkg:NAME or a Hugging Face hub id.")
    prompt: str = Field(default=QUALITY_PROMPT, description="Prompt with {instruction} and {output} placeholders.")


class DeitaQualityScorer(DeitaScorer):
    """Expected quality in [1, 6] of each response of the row to the user query it answers."""

    name = "deita-quality"
    version = "2"
    Options = DeitaQualityOptions
    default_column = "deita_quality"

    def prompt_ids(self, query, response):
        return self.fit(self.options.prompt, {"instruction": query, "output": response}, ("output", "instruction"))
