"""`hash-embedder`: a cheap stand-in embedder for scale benchmarks (feature hashing of words, no model).

A local plugin module (load it with ``plugins = ["hash_embedder.py"]`` in a recipe); `bench/scale.py`
uses it where MiniLM on 2 CPU cores (~250 texts/s) would take hours. Each text becomes the signed
counts of its lower-cased words and word bigrams hashed into ``dim`` buckets, L2-normalised, float32:
vectors of the same shape and cost profile downstream (cache, k-center) as a sentence encoder's,
computed at ~100k texts/s. Not a semantic embedding: use it to measure the machinery, not to select.
"""

from __future__ import annotations

from pydantic import Field

import dqf


class HashEmbedderOptions(dqf.PluginOptions):
    dim: int = Field(default=384, gt=0, description="Vector size (384: all-MiniLM-L6-v2's).")
    field: str = Field(default="instruction", description="Text to embed (as hf-encoder's `field`).")
    seed: int = Field(default=0, description="Hash seed.")


class HashEmbedder(dqf.Embedder):
    """Signed feature hashing of words and word bigrams into `dim` buckets, L2-normalised."""

    name = "hash-embedder"
    version = "1"
    Options = HashEmbedderOptions
    batch_size = 4096

    def identity(self):
        import polars as pl

        return {"polars": pl.__version__}  # the hash function is polars'; a new version may change it

    def embed(self, texts):
        import numpy as np
        import polars as pl

        d = self.options.dim
        words = pl.Series("w", list(texts), dtype=pl.String).str.to_lowercase().str.extract_all(r"\w+")
        frame = pl.DataFrame({"row": np.arange(len(texts), dtype=np.int64), "w": words})
        frame = frame.with_columns(pl.concat_list(pl.col("w"), pl.col("w").list.eval(
            pl.element() + " " + pl.element().shift(-1)).list.drop_nulls()).alias("w")).explode("w").drop_nulls()
        h = frame["w"].hash(seed=self.options.seed).to_numpy()
        flat = frame["row"].to_numpy() * d + (h % np.uint64(d)).astype(np.int64)
        sign = np.where((h >> np.uint64(40)) & np.uint64(1), 1.0, -1.0)
        out = np.bincount(flat, weights=sign, minlength=len(texts) * d).reshape(len(texts), d).astype(np.float32)
        out[:, 0] += 1e-3  # an empty text still gets a (tiny, common) vector
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out


@dqf.hookimpl
def dqf_register_embedders(register):
    register(HashEmbedder)
