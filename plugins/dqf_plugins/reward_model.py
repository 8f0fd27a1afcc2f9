"""`reward-model` scorer: MoDS's quality score, one reward-model logit per (question, answer) pair."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, PositiveInt, model_validator

from dqf import (DqfError, ModelMixin, PluginOptions, Scorer, collate, length_batches, load_model, load_tokenizer,
                 quantize_int8, require, row_texts)

DEFAULT_MODEL = "OpenAssistant/reward-model-deberta-v3-large-v2"


class RewardModelOptions(PluginOptions):
    model: str = Field(default=DEFAULT_MODEL,
                       description="Reward model: a local folder, pkg:NAME, or a Hugging Face hub id. It must be a "
                                   "sequence classifier with a single output (num_labels = 1).")
    column: str = Field(default="reward", description="Name of the column the score is written to.")
    max_length: PositiveInt = Field(default=512,
                                    description="Tokens per (question, answer) pair; longer pairs are truncated "
                                                "(longest side first) and counted in the manifest's stats. Also "
                                                "capped by the model's own position limit.")
    batch_size: PositiveInt = Field(default=16, description="Pairs per forward pass (rows are length-sorted first).")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field(
        default="auto", description="auto: cuda, then mps, then cpu (always cpu when quantize = 'int8').")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="auto: bfloat16 (or float16) on a GPU, float32 on CPU.")
    quantize: Literal["none", "int8"] = Field(
        default="none", description="int8: the Linear layers (the head aside) run in int8, per-channel weights and "
                                    "per-token activations (dqf.quantize_int8; CPU only; faster, scores shift "
                                    "slightly).")

    @model_validator(mode="after")
    def _int8_is_cpu_fp32(self):
        if self.quantize == "int8" and self.device in ("cuda", "mps"):
            raise ValueError(f"quantize = 'int8' runs on CPU only (int8 CPU kernels); "
                             f"set device = 'cpu' or 'auto', or quantize = 'none' to use {self.device}")
        if self.quantize == "int8" and self.dtype not in ("auto", "float32"):
            raise ValueError(f"quantize = 'int8' needs float32 activations; dtype = {self.dtype!r} cannot be combined "
                             f"with it")
        return self


def questions_and_answers(batch) -> tuple[list[str], list[str]]:
    """MoDS's pair: question = instruction, plus newline and input when the input is non-empty; answer = output."""
    return row_texts(batch, "prompt"), row_texts(batch, "output")


#: Most padding a sub-batch may carry, as a fraction of its real tokens. Past it a batch of pairs costs more
#: than running them one at a time, which is what happens to the few long rows at the end of a sorted batch.
MAX_PADDING = 0.25


def sub_batches(lengths, batch_size: int, max_padding: float = MAX_PADDING) -> list[list[int]]:
    """Positions grouped for forward passes: sorted by length, at most ``batch_size`` each, padding capped."""
    return length_batches(lengths, batch_size, max_padding=max_padding)


def _one_line(text: str, limit: int = 400) -> str:
    # hub/OS errors from from_pretrained span several lines; the user gets one readable line
    flat = re.sub(r"\s+", " ", text).strip()
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class RewardModelScorer(ModelMixin, Scorer):
    """Score each row with a reward model's single logit on ``tokenizer(question, answer)``, as MoDS does.

    The engine hands large batches; inside one, rows are sorted by token length and run in
    sub-batches of at most ``options.batch_size`` padded only to their own longest row (a
    sub-batch closes early rather than carry more than ``MAX_PADDING`` of padding), so padding
    costs little and scores do not depend on which rows share a sub-batch.
    """

    name = "reward-model"
    version = "1"
    Options = RewardModelOptions
    cache_ignore = frozenset({"batch_size"})  # speed only: padding is masked, scores equal within fp noise
    # Large engine batches give the length sort many rows to group; the forward-pass size is options.batch_size.
    batch_size = 512

    def __init__(self, options=None):
        super().__init__(options)
        self._model = None
        self._tokenizer = None
        self._max_length = None
        self._truncated = 0
        self._scored = 0

    # -- identity -------------------------------------------------------------------------

    def device_preference(self):
        return "cpu" if self.options.quantize == "int8" else self.options.device  # int8 kernels are CPU-only

    def identity(self):
        # the int8 scheme is named so that scores of an earlier scheme are never served from the cache
        return {**self.model_identity(), "quantize": "int8-per-token" if self.options.quantize == "int8" else "none"}

    def columns(self):
        import polars as pl

        return {self.options.column: pl.Float64}

    def stats(self):
        return self.truncation_stats()

    # -- setup ----------------------------------------------------------------------------
    def setup(self):
        if self._model is not None:
            return
        torch = require("torch")
        ref = self.model_ref()
        device, dtype = self.placement()
        if self.options.quantize == "int8" and device.type != "cpu":
            raise DqfError(f"reward-model: quantize = 'int8' runs on CPU only, but device {device.type!r} was chosen")
        try:
            tokenizer = load_tokenizer(ref)
            model = load_model(ref, "AutoModelForSequenceClassification", device=device, dtype=dtype,
                               inference=self.options.quantize != "int8")
        except DqfError as exc:
            raise DqfError(f"reward-model: {_one_line(str(exc))}") from None
        cfg = model.config
        archs = getattr(cfg, "architectures", None) or []
        if archs and not any(a.endswith("ForSequenceClassification") for a in archs):
            # AutoModelForSequenceClassification would bolt a random head onto a bare encoder: scores would be noise
            raise DqfError(f"reward-model: model {self.options.model!r} is a {archs[0]}, not a sequence classifier "
                           f"with a trained head; give a reward model (e.g. {DEFAULT_MODEL})")
        if cfg.num_labels != 1:
            raise DqfError(f"reward-model: model {self.options.model!r} has {cfg.num_labels} output labels; a reward "
                           f"model has exactly one (config.num_labels = 1)")
        if self.options.quantize == "int8":
            # the one-logit head stays float32: its output is the score itself
            model = quantize_int8(model, skip=("classifier",))
        self._max_length = self._effective_max_length(tokenizer, cfg)
        self._tokenizer, self._model = tokenizer, model

    def _effective_max_length(self, tokenizer, cfg) -> int:
        limit = self.options.max_length
        if 0 < (tokenizer.model_max_length or 0) < 1_000_000:  # unset limits are a huge sentinel
            limit = min(limit, tokenizer.model_max_length)
        # Absolute position embeddings cannot index past their table; DeBERTa-v3 (relative only) has no such limit.
        if getattr(cfg, "position_biased_input", True) and getattr(cfg, "max_position_embeddings", None):
            limit = min(limit, cfg.max_position_embeddings)
        return limit

    # -- scoring --------------------------------------------------------------------------
    def _encode(self, questions, answers) -> list[dict[str, list[int]]]:
        tok = self._tokenizer
        full = tok(questions, answers, truncation=False, verbose=False)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in full]
        rows = [{k: full[k][i] for k in keys} for i in range(len(questions))]
        long = [i for i, r in enumerate(rows) if len(r["input_ids"]) > self._max_length]
        if long:
            # only the over-long pairs are tokenized twice, and counting them here is what stats() reports
            cut = tok([questions[i] for i in long], [answers[i] for i in long], truncation="longest_first",
                      max_length=self._max_length, verbose=False)
            for j, i in enumerate(long):
                rows[i] = {k: cut[k][j] for k in keys}
            self._truncated += len(long)
        return rows

    def _collate(self, rows):
        pad_id = self._tokenizer.pad_token_id if self._tokenizer.pad_token_id is not None else 0
        return collate(rows, pad_id, side=self._tokenizer.padding_side)

    def score(self, batch):
        import numpy as np
        import polars as pl

        torch = require("torch")
        if self._model is None:
            self.setup()
        col = self.options.column
        if batch.height == 0:
            return pl.DataFrame(schema={col: pl.Float64})
        questions, answers = questions_and_answers(batch)
        rows = self._encode(questions, answers)
        scores = np.empty(len(rows), dtype=np.float64)
        device = self.placement()[0]
        with torch.inference_mode():
            for idx in sub_batches([len(r["input_ids"]) for r in rows], self.options.batch_size):
                inputs = {k: v.to(device) for k, v in self._collate([rows[i] for i in idx]).items()}
                logits = self._model(**inputs).logits
                scores[idx] = logits[:, 0].float().cpu().numpy()
        self._scored += len(rows)
        return pl.DataFrame({col: scores}, schema={col: pl.Float64})
