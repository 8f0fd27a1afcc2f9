"""`reward-model` scorer: MoDS's quality score, one reward-model logit per (question, answer) pair."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, PositiveInt, model_validator

from dqf import DqfError, PluginOptions, row_texts
from dqf.lm import (MAX_PADDING, ModelScorer, collate, effective_max_length, forward_mode, length_batches, pad_token_id,
                    quantize_int8)

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
    batch_size: Optional[PositiveInt] = Field(
        default=None, description="Pairs per forward pass (rows are length-sorted first). Default: 16 on CPU, "
                                  "128 on a GPU (bench/gpu.py: 24x the one-pair loop at 128, 13x at 32).")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field(
        default="auto", description="auto: cuda, then mps, then cpu (always cpu when quantize = 'int8').")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="auto: bfloat16 (or float16) on a GPU, float32 on CPU.")
    quantize: Literal["none", "int8"] = Field(
        default="none", description="int8: the Linear layers (the head aside) run in int8, per-channel weights and "
                                    "per-token activations (dqf.lm.quantize_int8; CPU only; faster, scores shift "
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


def sub_batches(lengths, batch_size: int, max_padding: float = MAX_PADDING) -> list[list[int]]:
    """Positions grouped for forward passes: sorted by length, at most ``batch_size`` each, padding capped."""
    return length_batches(lengths, batch_size, max_padding=max_padding)


class RewardModelScorer(ModelScorer):
    """Score each row with a reward model's single logit on ``tokenizer(question, answer)``, as MoDS does.

    The engine hands large batches; inside one, rows are sorted by token length and run in
    sub-batches of at most ``options.batch_size`` padded only to their own longest row (a
    sub-batch closes early rather than carry more than ``MAX_PADDING`` of padding), so padding
    costs little and scores do not depend on which rows share a sub-batch.
    """

    name = "reward-model"
    version = "1"
    Options = RewardModelOptions
    auto_class = "AutoModelForSequenceClassification"
    # -- identity -------------------------------------------------------------------------

    def device_preference(self):
        return "cpu" if self.options.quantize == "int8" else self.options.device  # int8 kernels are CPU-only

    def pairs_per_pass(self, device) -> int:
        # A GPU runs a small batch in the time its kernels take to launch; a CPU gains little past 16.
        return self.options.batch_size or (16 if device.type == "cpu" else 128)

    def identity(self):
        # the int8 scheme is named so that scores of an earlier scheme are never served from the cache
        return {**self.model_identity(), "quantize": "int8-per-token" if self.options.quantize == "int8" else "none"}

    def columns(self):
        import polars as pl

        return {self.options.column: pl.Float64}

    def inference(self):
        return self.options.quantize != "int8"  # int8 replaces the Linear layers itself

    def effective_max_length(self, tokenizer, config):
        return effective_max_length(self.options.max_length, config, tokenizer)

    # -- setup ----------------------------------------------------------------------------
    def setup(self):
        if self.model is None and self.options.quantize == "int8" and self.placement()[0].type != "cpu":
            raise DqfError(f"reward-model: quantize = 'int8' runs on CPU only, but device "
                           f"{self.placement()[0].type!r} was chosen")
        super().setup()

    def loaded(self):
        cfg = self.model.config
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
            self.model = quantize_int8(self.model, skip=("classifier",))

    # -- scoring --------------------------------------------------------------------------
    def _encode(self, questions, answers) -> list[dict[str, list[int]]]:
        tok = self.tokenizer
        full = tok(questions, answers, truncation=False, verbose=False)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in full]
        rows = [{k: full[k][i] for k in keys} for i in range(len(questions))]
        long = [i for i, r in enumerate(rows) if len(r["input_ids"]) > self.max_length]
        if long:
            # only the over-long pairs are tokenized twice, and counting them here is what stats() reports
            cut = tok([questions[i] for i in long], [answers[i] for i in long], truncation="longest_first",
                      max_length=self.max_length, verbose=False)
            for j, i in enumerate(long):
                rows[i] = {k: cut[k][j] for k in keys}
            self.count("truncated_rows", len(long))
        return rows

    def _collate(self, rows):
        return collate(rows, pad_token_id(self.tokenizer), side=self.tokenizer.padding_side)

    def score_batch(self, batch):
        import numpy as np
        import polars as pl

        col = self.options.column
        questions, answers = questions_and_answers(batch)
        rows = self._encode(questions, answers)
        scores = np.empty(len(rows), dtype=np.float64)
        device = self.placement()[0]
        with forward_mode(device):
            for idx in sub_batches([len(r["input_ids"]) for r in rows], self.pairs_per_pass(device)):
                inputs = {k: v.to(device) for k, v in self._collate([rows[i] for i in idx]).items()}
                logits = self.model(**inputs).logits
                scores[idx] = logits[:, 0].float().cpu().numpy()
        return pl.DataFrame({col: scores}, schema={col: pl.Float64})
